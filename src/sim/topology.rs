//! The simulator's input files: a topology and an event script.
//!
//! Topology: `#` starts a comment line; the first other line is the number of branches N; then
//! N lines `<name> <balance>`; then any number of `<src> <dst>` lines, each a one-way FIFO link.
//! A pair of branches with a link in either direction shares one simulated connection.
//!
//! Script: first any setting lines, then the events, one per line (`#` comments and blank lines
//! allowed anywhere).
//!
//! Settings ([`Settings`]), before any event:
//! - `durable <name>` or `durable all`: the branch (every branch) has a store, commits what it
//!   changes (a commit takes a tick) and can crash and restart; without it a branch lives in
//!   memory and cannot crash.
//! - `grace <ticks>`: how long a branch waits for a peer whose connection is down before its
//!   snapshots stop waiting for that peer's markers (records cut short); default
//!   [`super::DEFAULT_GRACE_TICKS`].
//!
//! Events ([`Event`]):
//! - `send <src> <dst> <amount>`, `snapshot <name>`, `tick [n]`;
//! - `cut <a> <b>`: the connection between `a` and `b` fails (both directions: what is in
//!   flight on it is lost) and comes back at once, and the two branches resume their channels;
//! - `crash <name>`: a durable branch dies: what it had not committed is lost, and so is
//!   everything in flight on its connections; it stays down until `restart <name>`, which
//!   starts it again from its store (its peers reconnect to it);
//! - `pause <name> <ticks>`: for the next `ticks` ticks the branch takes no input (nothing is
//!   delivered to it, its timers and commits wait) and so sends nothing; its connections stay
//!   up, so to its peers it is a slow branch.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use super::SimError;

/// Branches, their balances and the one-way links between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Branch names in file order (the order of the output).
    pub names: Vec<String>,
    /// Initial balance per branch.
    pub balances: Vec<u64>,
    /// `(src, dst)` branch indices of every link, in file order.
    pub links: Vec<(usize, usize)>,
}

impl Topology {
    /// Parses a topology file's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, SimError> {
        let error = |line: usize, reason: String| SimError::at(file, line, reason);
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| (index + 1, line.trim()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
        let (count_line, count) = lines.next().ok_or_else(|| {
            SimError::at(
                file,
                0,
                "empty topology: expected the number of branches".into(),
            )
        })?;
        let count: usize = count.parse().map_err(|_| {
            error(
                count_line,
                format!("expected the number of branches, found {count:?}"),
            )
        })?;
        let mut names = Vec::with_capacity(count);
        let mut balances = Vec::with_capacity(count);
        let mut index: HashMap<String, usize> = HashMap::new();
        for _ in 0..count {
            let (number, line) = lines.next().ok_or_else(|| {
                SimError::at(
                    file,
                    0,
                    format!("expected {count} branches, found {}", names.len()),
                )
            })?;
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, balance] = fields[..] else {
                return Err(error(
                    number,
                    format!("expected `<name> <balance>`, found {line:?}"),
                ));
            };
            let balance: u64 = balance
                .parse()
                .map_err(|_| error(number, format!("bad balance {balance:?}")))?;
            if index.insert(name.to_string(), names.len()).is_some() {
                return Err(error(number, format!("duplicate branch name {name:?}")));
            }
            names.push(name.to_string());
            balances.push(balance);
        }
        let mut links = Vec::new();
        let mut seen = BTreeSet::new();
        for (number, line) in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [src, dst] = fields[..] else {
                return Err(error(
                    number,
                    format!("expected a link `<src> <dst>`, found {line:?}"),
                ));
            };
            let lookup = |name: &str| {
                index
                    .get(name)
                    .copied()
                    .ok_or_else(|| error(number, format!("unknown branch {name:?}")))
            };
            let (src, dst) = (lookup(src)?, lookup(dst)?);
            if src == dst {
                return Err(error(
                    number,
                    format!("a link from {:?} to itself", names[src]),
                ));
            }
            if !seen.insert((src, dst)) {
                return Err(error(
                    number,
                    format!("duplicate link {} -> {}", names[src], names[dst]),
                ));
            }
            links.push((src, dst));
        }
        Ok(Self {
            names,
            balances,
            links,
        })
    }

    /// The index of branch `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The topology in its file format.
    pub fn to_text(&self) -> String {
        let mut text = format!("{}\n", self.names.len());
        for (name, balance) in self.names.iter().zip(&self.balances) {
            let _ = writeln!(text, "{name} {balance}");
        }
        for &(src, dst) in &self.links {
            let _ = writeln!(text, "{} {}", self.names[src], self.names[dst]);
        }
        text
    }
}

/// One scripted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `src` sends `amount` to `dst` now.
    Send { src: usize, dst: usize, amount: u64 },
    /// `branch` starts the next snapshot now.
    Snapshot { branch: usize },
    /// Advance this many ticks.
    Tick(u64),
    /// The connection between `src` and `dst` fails now and is re-established at once.
    Cut { src: usize, dst: usize },
    /// The durable `branch` crashes now, losing what it had not committed.
    Crash { branch: usize },
    /// The crashed `branch` starts again from its store.
    Restart { branch: usize },
    /// `branch` takes no input for the next `ticks` ticks.
    Pause { branch: usize, ticks: u64 },
}

impl Event {
    /// The event as a script line.
    pub fn to_line(self, topology: &Topology) -> String {
        let names = &topology.names;
        match self {
            Event::Send { src, dst, amount } => {
                format!("send {} {} {amount}", names[src], names[dst])
            }
            Event::Snapshot { branch } => format!("snapshot {}", names[branch]),
            Event::Tick(1) => "tick".to_string(),
            Event::Tick(n) => format!("tick {n}"),
            Event::Cut { src, dst } => format!("cut {} {}", names[src], names[dst]),
            Event::Crash { branch } => format!("crash {}", names[branch]),
            Event::Restart { branch } => format!("restart {}", names[branch]),
            Event::Pause { branch, ticks } => format!("pause {} {ticks}", names[branch]),
        }
    }
}

/// What a scenario says about its branches before its events: which ones are durable, and the
/// grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Per branch (topology order): it has a store, so it can crash and restart.
    pub durable: Vec<bool>,
    /// Ticks a branch waits for a peer whose connection is down before its snapshots stop
    /// waiting for that peer (the nodes' grace period).
    pub grace_ticks: u64,
}

impl Settings {
    /// Every branch in memory, the default grace period.
    pub fn new(topology: &Topology) -> Self {
        Self {
            durable: vec![false; topology.names.len()],
            grace_ticks: super::DEFAULT_GRACE_TICKS,
        }
    }

    /// The settings as script lines (none for the defaults).
    pub fn to_lines(&self, topology: &Topology) -> String {
        let mut text = String::new();
        if !self.durable.is_empty() && self.durable.iter().all(|&d| d) {
            text.push_str("durable all\n");
        } else {
            for (name, _) in topology
                .names
                .iter()
                .zip(&self.durable)
                .filter(|(_, d)| **d)
            {
                let _ = writeln!(text, "durable {name}");
            }
        }
        if self.grace_ticks != super::DEFAULT_GRACE_TICKS {
            let _ = writeln!(text, "grace {}", self.grace_ticks);
        }
        text
    }
}

/// An event script: its settings, and its events with the line each came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The setting lines.
    pub settings: Settings,
    /// `(line number, event)`, in order.
    pub events: Vec<(usize, Event)>,
}

impl Script {
    /// Parses an event script's text against `topology`; `file` names it in errors.
    pub fn parse(file: &str, text: &str, topology: &Topology) -> Result<Self, SimError> {
        let mut settings = Settings::new(topology);
        let mut events = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |reason: String| SimError::at(file, number, reason);
            let lookup = |name: &str| {
                topology
                    .index(name)
                    .ok_or_else(|| error(format!("unknown branch {name:?}")))
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let setting = matches!(fields[..], ["durable", _] | ["grace", _]);
            if setting && !events.is_empty() {
                return Err(error(format!(
                    "`{}` is a setting: it must come before the script's first event",
                    fields[0]
                )));
            }
            let event = match fields[..] {
                ["durable", "all"] => {
                    settings.durable.iter_mut().for_each(|d| *d = true);
                    continue;
                }
                ["durable", name] => {
                    settings.durable[lookup(name)?] = true;
                    continue;
                }
                ["grace", n] => {
                    settings.grace_ticks = match n.parse() {
                        Ok(ticks) if ticks >= 1 => ticks,
                        _ => {
                            return Err(error(format!(
                                "bad grace period {n:?}: expected a number of ticks, at least 1"
                            )));
                        }
                    };
                    continue;
                }
                ["send", src, dst, amount] => Event::Send {
                    src: lookup(src)?,
                    dst: lookup(dst)?,
                    amount: amount
                        .parse()
                        .map_err(|_| error(format!("bad amount {amount:?}")))?,
                },
                ["snapshot", name] => Event::Snapshot {
                    branch: lookup(name)?,
                },
                ["cut", src, dst] => {
                    let (src, dst) = (lookup(src)?, lookup(dst)?);
                    if !topology.links.contains(&(src, dst))
                        && !topology.links.contains(&(dst, src))
                    {
                        return Err(error(format!(
                            "there is no link between {} and {} to cut",
                            topology.names[src], topology.names[dst]
                        )));
                    }
                    Event::Cut { src, dst }
                }
                ["crash", name] => {
                    let branch = lookup(name)?;
                    if !settings.durable[branch] {
                        return Err(error(super::not_durable(&topology.names[branch])));
                    }
                    Event::Crash { branch }
                }
                ["restart", name] => Event::Restart {
                    branch: lookup(name)?,
                },
                ["pause", name, n] => Event::Pause {
                    branch: lookup(name)?,
                    ticks: n
                        .parse()
                        .map_err(|_| error(format!("bad tick count {n:?}")))?,
                },
                ["tick"] => Event::Tick(1),
                ["tick", n] => Event::Tick(
                    n.parse()
                        .map_err(|_| error(format!("bad tick count {n:?}")))?,
                ),
                _ => {
                    return Err(error(format!(
                        "expected `send <src> <dst> <amount>`, `snapshot <name>`, `tick [n]`, `cut <a> <b>`, `crash <name>`, `restart <name>`, `pause <name> <ticks>`, or before them `durable <name>|all` or `grace <ticks>`, found {line:?}"
                    )));
                }
            };
            events.push((number, event));
        }
        Ok(Self { settings, events })
    }

    /// The script in its file format.
    pub fn to_text(&self, topology: &Topology) -> String {
        let mut text = self.settings.to_lines(topology);
        for (_, event) in &self.events {
            text.push_str(&event.to_line(topology));
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_topology_with_comments() {
        let text = "# ring\n3\na 10\nb 20\nc 0\n# links\na b\nb c\nc a\n";
        let topology = Topology::parse("t", text).unwrap();
        assert_eq!(topology.names, ["a", "b", "c"]);
        assert_eq!(topology.balances, [10, 20, 0]);
        assert_eq!(topology.links, [(0, 1), (1, 2), (2, 0)]);
        assert_eq!(Topology::parse("t", &topology.to_text()).unwrap(), topology);
    }

    #[test]
    fn topology_errors_name_the_line() {
        let cases = [
            ("x\n", "t:1: expected the number of branches"),
            ("2\na 1\n", "t: expected 2 branches, found 1"),
            ("2\na 1\nb -3\n", "t:3: bad balance"),
            ("2\na 1\na 2\n", "t:3: duplicate branch name"),
            ("2\na 1\nb 2\na c\n", "t:4: unknown branch \"c\""),
            ("2\na 1\nb 2\na a\n", "t:4: a link from \"a\" to itself"),
            ("2\na 1\nb 2\na b\n\na b\n", "t:6: duplicate link a -> b"),
            ("2\na 1\nb 2\na b c\n", "t:4: expected a link"),
        ];
        for (text, expected) in cases {
            let err = Topology::parse("t", text).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn settings_come_first_and_the_script_reads_back_as_written() {
        let topology = Topology::parse("t", "3\na 1\nb 2\nc 3\na b\nb c\nc a\n").unwrap();
        let text = "# settings\ndurable b\ngrace 3\ncrash b\ntick\nrestart b\npause a 2\ncut c b\n";
        let script = Script::parse("e", text, &topology).unwrap();
        assert_eq!(script.settings.durable, [false, true, false]);
        assert_eq!(script.settings.grace_ticks, 3);
        assert_eq!(
            script.events,
            [
                (4, Event::Crash { branch: 1 }),
                (5, Event::Tick(1)),
                (6, Event::Restart { branch: 1 }),
                (
                    7,
                    Event::Pause {
                        branch: 0,
                        ticks: 2
                    }
                ),
                (8, Event::Cut { src: 2, dst: 1 }),
            ]
        );
        let again = Script::parse("e", &script.to_text(&topology), &topology).unwrap();
        assert_eq!(again.settings, script.settings);
        assert_eq!(
            again.events.iter().map(|e| e.1).collect::<Vec<_>>(),
            script.events.iter().map(|e| e.1).collect::<Vec<_>>()
        );
        let all = Script::parse("e", "durable all\n", &topology).unwrap();
        assert_eq!(all.settings.to_lines(&topology), "durable all\n");
        assert_eq!(Settings::new(&topology).to_lines(&topology), "");
    }

    #[test]
    fn script_errors_name_the_line() {
        let topology = Topology::parse("t", "2\na 1\nb 2\na b\n").unwrap();
        let script =
            Script::parse("e", "send a b 1\n\ntick 3\nsnapshot b\ntick\n", &topology).unwrap();
        assert_eq!(
            script.events,
            [
                (
                    1,
                    Event::Send {
                        src: 0,
                        dst: 1,
                        amount: 1
                    }
                ),
                (3, Event::Tick(3)),
                (4, Event::Snapshot { branch: 1 }),
                (5, Event::Tick(1)),
            ]
        );
        for (text, expected) in [
            ("send a z 1\n", "e:1: unknown branch \"z\""),
            ("tick\nsend a b x\n", "e:2: bad amount"),
            ("tick -1\n", "e:1: bad tick count"),
            ("jump\n", "e:1: expected `send"),
            ("cut b b\n", "e:1: there is no link between b and b to cut"),
            (
                "crash a\n",
                "e:1: a is not durable: a crash would lose its money",
            ),
            (
                "tick\ndurable a\n",
                "e:2: `durable` is a setting: it must come before",
            ),
            ("grace 0\n", "e:1: bad grace period \"0\""),
            ("durable z\n", "e:1: unknown branch \"z\""),
            ("pause a x\n", "e:1: bad tick count"),
        ] {
            let err = Script::parse("e", text, &topology).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }
}
