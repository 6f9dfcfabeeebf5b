pub mod wire { include!(concat!(env!("OUT_DIR"), "/bank.rs")); }
