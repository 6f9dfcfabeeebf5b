//! One rule per test, driving a [`BranchNode`] directly.

use super::*;

fn config(name: &str, peers: &[&str]) -> NodeConfig {
    NodeConfig {
        name: name.into(),
        peers: peers.iter().map(|p| p.to_string()).collect(),
        send_window: 16,
        authenticated: true,
        durable: false,
        incarnation: 7,
        peer_grace: Duration::from_millis(100),
        directions: Vec::new(),
    }
}

#[test]
fn the_lower_name_dials_and_its_resume_goes_first() {
    let mut a = BranchNode::new(config("a", &["b"]), 10);
    let ready = a.take_ready();
    assert_eq!(
        ready.dials,
        vec![Dial {
            peer: 0,
            after_pause: false,
            known_incarnation: 0
        }]
    );
    a.step(Input::LinkUp { peer: 0, conn: 1 });
    let ready = a.take_ready();
    assert_eq!(
        ready.messages,
        vec![Outgoing {
            peer: 0,
            conn: 1,
            msg: PeerMsg::Resume {
                incarnation: 7,
                received: 0
            }
        }]
    );
    let mut b = BranchNode::new(config("b", &["a"]), 10);
    assert!(b.take_ready().dials.is_empty());
}

#[test]
fn one_way_peers_number_the_core_channels_in_peer_order() {
    let mut config = config("b", &["a", "c", "d"]);
    config.directions = vec![
        Directions {
            to: true,
            from: false,
        },
        Directions {
            to: false,
            from: true,
        },
        Directions {
            to: true,
            from: true,
        },
    ];
    let b = BranchNode::new(config, 10);
    let out: Vec<_> = (0..3).map(|p| b.outgoing_channel(p)).collect();
    let inc: Vec<_> = (0..3).map(|p| b.incoming_channel(p)).collect();
    assert_eq!(out, [Some(0), None, Some(1)]);
    assert_eq!(inc, [None, Some(0), Some(1)]);
    assert_eq!((b.core().outgoing(), b.core().incoming()), (2, 2));
}
