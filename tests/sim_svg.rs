//! `snapbank-sim --svg`: the space-time diagram of every shipped scenario and of generated 8- and
//! 10-branch ones is valid XML, has one cut per snapshot through one recording point per
//! branch, one arrow per message the trace shows, highlights exactly the transfers the
//! simulator recorded in transit (each crossing its cut forwards), and keeps a legible scale.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::RunLimited;

const SIM: &str = env!("CARGO_BIN_EXE_snapbank-sim");

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("snapbank-svg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `snapbank-sim` with `args` plus `--trace --svg <file>`; returns stdout and the SVG.
fn run_sim(args: &[String], svg: &Path) -> (String, String) {
    let output = Command::new(SIM)
        .args(args)
        .arg("--trace")
        .arg("--svg")
        .arg(svg)
        .run_limited();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let drawing = std::fs::read_to_string(svg).expect("the SVG file was written");
    (stdout, drawing)
}

/// The facts of a run's output: messages sent, snapshots, transfers recorded in transit
/// (`(snapshot, src, dst, amount)`), branch count.
struct Run {
    sends: usize,
    snapshots: usize,
    in_transit: Vec<(u32, String, String, u64)>,
}

fn parse_output(stdout: &str) -> Run {
    let sends = stdout
        .lines()
        .filter(|line| line.starts_with("tick ") && line.contains(": send "))
        .count();
    let mut snapshots = 0;
    let mut in_transit = Vec::new();
    let mut current = 0u32;
    for line in stdout.lines() {
        if let Some(id) = line.strip_prefix("snapshot ") {
            current = id.parse().unwrap();
            snapshots += 1;
        } else if let Some(rest) = line.strip_suffix(')') {
            let fields: Vec<&str> = rest.split(' ').collect();
            if let [src, dst, token] = fields[..] {
                let amount = token.strip_prefix("token(").unwrap().parse().unwrap();
                in_transit.push((current, src.to_string(), dst.to_string(), amount));
            }
        }
    }
    Run {
        sends,
        snapshots,
        in_transit,
    }
}

fn attr_f64(node: roxmltree::Node, name: &str) -> f64 {
    node.attribute(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .parse()
        .unwrap()
}

fn has_class(node: &roxmltree::Node, class: &str) -> bool {
    node.attribute("class")
        .is_some_and(|classes| classes.split(' ').any(|c| c == class))
}

/// Checks a diagram against its run; `branches` is the number of branches.
fn check_diagram(name: &str, drawing: &str, run: &Run, branches: usize) {
    let doc = roxmltree::Document::parse(drawing)
        .unwrap_or_else(|err| panic!("{name}: not valid XML: {err}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg", "{name}");
    let width = attr_f64(root, "width");
    let height = attr_f64(root, "height");

    // One arrow per message, each a transfer or a marker.
    let messages: Vec<_> = doc
        .descendants()
        .filter(|n| has_class(n, "message"))
        .collect();
    assert_eq!(messages.len(), run.sends, "{name}: arrows vs messages sent");
    assert!(
        messages
            .iter()
            .all(|m| has_class(m, "transfer") ^ has_class(m, "marker"))
    );

    // One cut per snapshot, through one recording point per branch.
    let cuts: Vec<_> = doc.descendants().filter(|n| has_class(n, "cut")).collect();
    assert_eq!(cuts.len(), run.snapshots, "{name}: cuts vs snapshots");
    let mut records: HashMap<(u32, String), f64> = HashMap::new();
    for record in doc.descendants().filter(|n| has_class(n, "record")) {
        let snapshot: u32 = record.attribute("data-snapshot").unwrap().parse().unwrap();
        let branch = record.attribute("data-branch").unwrap().to_string();
        let x = attr_f64(record, "cx");
        assert!(
            records.insert((snapshot, branch.clone()), x).is_none(),
            "{name}: {branch} recorded S{snapshot} twice"
        );
    }
    for (index, cut) in cuts.iter().enumerate() {
        assert_eq!(
            cut.attribute("data-snapshot"),
            Some(index.to_string().as_str()),
            "{name}"
        );
        let points = cut.attribute("points").unwrap().split(' ').count();
        assert_eq!(points, branches, "{name}: cut S{index} points");
    }
    assert_eq!(records.len(), run.snapshots * branches, "{name}");

    // Exactly the transfers the simulator recorded in transit are highlighted, and each
    // crosses its cut forwards: sent left of the sender's point, delivered right of the
    // receiver's.
    let mut highlighted = Vec::new();
    for message in messages.iter().filter(|m| has_class(m, "transfer")) {
        let listed = message.attribute("data-in-transit").unwrap();
        assert_eq!(
            has_class(message, "in-transit"),
            !listed.is_empty(),
            "{name}"
        );
        let src = message.attribute("data-src").unwrap().to_string();
        let dst = message.attribute("data-dst").unwrap().to_string();
        let amount: u64 = message.attribute("data-amount").unwrap().parse().unwrap();
        let line = message.children().find(|n| n.has_tag_name("line")).unwrap();
        let (x1, x2) = (attr_f64(line, "x1"), attr_f64(line, "x2"));
        // A resend after a cut starts where the transfer was first sent (its debit).
        let x1 = x1.min(attr_f64(*message, "data-first-sent"));
        for snapshot in listed.split(' ').filter(|s| !s.is_empty()) {
            let snapshot: u32 = snapshot.parse().unwrap();
            let sender_cut = records[&(snapshot, src.clone())];
            let receiver_cut = records[&(snapshot, dst.clone())];
            assert!(
                x1 < sender_cut && x2 > receiver_cut,
                "{name}: {src}->{dst} ({amount}) in transit for S{snapshot} must cross the cut"
            );
            highlighted.push((snapshot, src.clone(), dst.clone(), amount));
        }
    }
    let mut expected = run.in_transit.clone();
    expected.sort();
    highlighted.sort();
    assert_eq!(highlighted, expected, "{name}: in-transit transfers");

    // Legible: everything inside the drawing, branch lines well apart, no tiny text.
    for node in doc.descendants().filter(|n| n.is_element()) {
        for (attr, limit) in [
            ("x", width),
            ("x1", width),
            ("x2", width),
            ("cx", width),
            ("y", height),
            ("y1", height),
            ("y2", height),
            ("cy", height),
        ] {
            if let Some(value) = node.attribute(attr).and_then(|v| v.parse::<f64>().ok()) {
                assert!(
                    (0.0..=limit).contains(&value),
                    "{name}: {attr}={value} outside 0..={limit}"
                );
            }
        }
        if let Some(size) = node.attribute("font-size") {
            assert!(size.parse::<f64>().unwrap() >= 11.0, "{name}: font {size}");
        }
    }
    let mut rows: Vec<f64> = doc
        .descendants()
        .filter(|n| has_class(n, "branch-line"))
        .map(|n| attr_f64(n, "y1"))
        .collect();
    assert_eq!(rows.len(), branches, "{name}");
    rows.sort_by(f64::total_cmp);
    assert!(
        rows.windows(2).all(|pair| pair[1] - pair[0] >= 60.0),
        "{name}: branch lines too close"
    );
    // Tick columns in order, none squeezed below the width of a quiet tick.
    let ticks: Vec<f64> = doc
        .descendants()
        .filter(|n| has_class(n, "tick"))
        .map(|n| attr_f64(n, "x1"))
        .collect();
    assert!(!ticks.is_empty(), "{name}");
    assert!(
        ticks.windows(2).all(|pair| pair[1] - pair[0] >= 14.0),
        "{name}: tick columns squeezed"
    );
}

#[test]
fn every_shipped_scenario_draws_a_faithful_diagram() {
    let dir = scenarios_dir();
    let scratch = Scratch::new("shipped");
    let mut drawn = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "topo") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let mut args = vec![
            path.display().to_string(),
            dir.join(format!("{name}.events")).display().to_string(),
        ];
        let delays = dir.join(format!("{name}.delays"));
        if delays.exists() {
            args.extend(["--delays".to_string(), delays.display().to_string()]);
        } else {
            let extra = std::fs::read_to_string(dir.join(format!("{name}.args"))).unwrap();
            args.extend(extra.split_whitespace().map(String::from));
        }
        let svg = scratch.0.join(format!("{name}.svg"));
        let (stdout, drawing) = run_sim(&args, &svg);
        let branches: usize = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let run = parse_output(&stdout);
        assert!(run.snapshots >= 1 && run.sends >= 2, "{name}");
        check_diagram(&name, &drawing, &run, branches);
        drawn += 1;
    }
    assert!(drawn >= 4, "scenarios drawn: {drawn}");
}

/// A generated scenario: `n` branches with links both ways between neighbours on a ring plus
/// chords `i -> i+3`, `rounds` ticks of transfers, snapshots started at three branches.
fn generated(n: usize, rounds: usize, seed: u64) -> (String, String) {
    let name = |i: usize| format!("b{}", i + 1);
    let mut topology = format!("# generated: {n} branches\n{n}\n");
    for i in 0..n {
        topology.push_str(&format!("{} 1000\n", name(i)));
    }
    let mut links = Vec::new();
    for i in 0..n {
        for j in [(i + 1) % n, (i + n - 1) % n, (i + 3) % n] {
            if j != i && !links.contains(&(i, j)) {
                links.push((i, j));
            }
        }
    }
    for &(i, j) in &links {
        topology.push_str(&format!("{} {}\n", name(i), name(j)));
    }
    // A small deterministic generator (xorshift), so the scenario is the same every run.
    let mut state = seed.max(1);
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let mut events = String::new();
    for round in 0..rounds {
        for _ in 0..(n / 2) {
            let (src, dst) = links[next(links.len())];
            events.push_str(&format!(
                "send {} {} {}\n",
                name(src),
                name(dst),
                1 + next(9)
            ));
        }
        if round % 4 == 1 && round / 4 < 3 {
            events.push_str(&format!("snapshot {}\n", name(next(n))));
        }
        events.push_str("tick\n");
    }
    (topology, events)
}

#[test]
fn eight_and_ten_branch_scenarios_stay_legible() {
    let scratch = Scratch::new("generated");
    for (n, seed) in [(8, 7), (10, 11)] {
        let (topology, events) = generated(n, 14, seed);
        let topo_file = scratch.0.join(format!("gen{n}.topo"));
        let events_file = scratch.0.join(format!("gen{n}.events"));
        std::fs::write(&topo_file, topology).unwrap();
        std::fs::write(&events_file, events).unwrap();
        let args = vec![
            topo_file.display().to_string(),
            events_file.display().to_string(),
            "--seed".to_string(),
            seed.to_string(),
        ];
        let svg = scratch.0.join(format!("gen{n}.svg"));
        let (stdout, drawing) = run_sim(&args, &svg);
        let run = parse_output(&stdout);
        assert_eq!(run.snapshots, 3, "gen{n}");
        assert!(
            !run.in_transit.is_empty(),
            "gen{n}: some money caught in transit"
        );
        check_diagram(&format!("gen{n}"), &drawing, &run, n);
        if let Ok(dir) = std::env::var("SNAPBANK_SVG_OUT") {
            std::fs::copy(&svg, Path::new(&dir).join(format!("gen{n}.svg"))).unwrap();
        }
    }
}

#[test]
fn an_unwritable_svg_path_is_an_error() {
    let dir = scenarios_dir();
    let output = Command::new(SIM)
        .arg(dir.join("fifo_marker.topo"))
        .arg(dir.join("fifo_marker.events"))
        .args(["--delays"])
        .arg(dir.join("fifo_marker.delays"))
        .args(["--svg", "/nonexistent-dir/out.svg"])
        .run_limited();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent-dir/out.svg: cannot write the diagram"),
        "{stderr}"
    );
}

/// Cut links (messages lost in flight and resent, some delivered twice and dropped): the diagram
/// still pairs every delivery with its own send, draws every resend, and ends each lost message
/// where the cut lost it.
#[test]
fn cut_links_draw_lost_and_resent_messages_faithfully() {
    let scratch = Scratch::new("cuts");
    let (topology, events) = generated(8, 14, 5);
    let mut with_cuts = String::new();
    for (index, line) in events.lines().enumerate() {
        with_cuts.push_str(line);
        with_cuts.push('\n');
        if line == "tick" && index % 3 == 0 {
            with_cuts.push_str("cut b1 b2\ncut b2 b3\ncut b1 b4\n");
        }
    }
    let topo_file = scratch.0.join("cuts.topo");
    let events_file = scratch.0.join("cuts.events");
    std::fs::write(&topo_file, topology).unwrap();
    std::fs::write(&events_file, with_cuts).unwrap();
    let args = vec![
        topo_file.display().to_string(),
        events_file.display().to_string(),
        "--seed".to_string(),
        "5".to_string(),
        "--check".to_string(),
    ];
    let svg = scratch.0.join("cuts.svg");
    let (stdout, drawing) = run_sim(&args, &svg);
    let lost: usize = stdout
        .lines()
        .filter(|line| line.contains(": cut "))
        .map(|line| {
            let (_, rest) = line.split_once(": cut ").unwrap();
            let (_, counts) = rest.split_once(": ").unwrap();
            counts.split(' ').next().unwrap().parse::<usize>().unwrap()
        })
        .sum();
    assert!(lost > 0, "the cuts lost nothing in flight:\n{stdout}");
    assert!(
        stdout
            .lines()
            .filter(|l| l.starts_with("check: ok"))
            .count()
            == 3,
        "every snapshot a consistent cut:\n{stdout}"
    );
    let run = parse_output(&stdout);
    check_diagram("cuts", &drawing, &run, 8);
    let doc = roxmltree::Document::parse(&drawing).unwrap();
    let drawn_lost = doc
        .descendants()
        .filter(|node| has_class(node, "lost"))
        .count();
    assert_eq!(drawn_lost, lost, "one lost arrow per message a cut lost");
}

/// The marks of one kind (`crash`, `restart`) as `(branch, tick, x, y)`, x and y where the mark is
/// centred.
fn marks(doc: &roxmltree::Document, class: &str) -> Vec<(String, u64, f64, f64)> {
    doc.descendants()
        .filter(|n| has_class(n, class))
        .map(|mark| {
            let lines: Vec<_> = mark.children().filter(|n| n.has_tag_name("line")).collect();
            let centre = |a: &str, b: &str| {
                lines
                    .iter()
                    .map(|l| attr_f64(*l, a) + attr_f64(*l, b))
                    .sum::<f64>()
                    / (2 * lines.len()) as f64
            };
            (
                mark.attribute("data-branch").unwrap().to_string(),
                mark.attribute("data-tick").unwrap().parse().unwrap(),
                centre("x1", "x2"),
                centre("y1", "y2"),
            )
        })
        .collect()
}

/// A crash is drawn on the crashed branch's line: a cross where it crashed, the line broken
/// (dashed) while it is down, a bar where it restarted; the rest of the diagram stays faithful.
#[test]
fn crashes_and_restarts_are_drawn_on_the_crashed_branch_lines() {
    let dir = scenarios_dir();
    let scratch = Scratch::new("crash");
    let args = vec![
        dir.join("crash_restart.topo").display().to_string(),
        dir.join("crash_restart.events").display().to_string(),
        "--seed".to_string(),
        "7".to_string(),
    ];
    let svg = scratch.0.join("crash.svg");
    let (stdout, drawing) = run_sim(&args, &svg);
    check_diagram("crash_restart", &drawing, &parse_output(&stdout), 3);
    let doc = roxmltree::Document::parse(&drawing).unwrap();
    let row = |branch: &str| {
        doc.descendants()
            .find(|n| has_class(n, "branch-line") && n.attribute("data-branch") == Some(branch))
            .map(|n| attr_f64(n, "y1"))
            .unwrap()
    };
    let crashes = marks(&doc, "crash");
    let restarts = marks(&doc, "restart");
    let ticks = |marks: &[(String, u64, f64, f64)]| -> Vec<(String, u64)> {
        marks.iter().map(|(b, t, _, _)| (b.clone(), *t)).collect()
    };
    // The scenario crashes b at tick 2 (back at 4) and c at tick 18 (back at 21).
    assert_eq!(
        ticks(&crashes),
        [("b".to_string(), 2), ("c".to_string(), 18)]
    );
    assert_eq!(
        ticks(&restarts),
        [("b".to_string(), 4), ("c".to_string(), 21)]
    );
    assert!(stdout.contains("tick 2: crash b: ") && stdout.contains("tick 21: restart c"));
    let downs: Vec<_> = doc.descendants().filter(|n| has_class(n, "down")).collect();
    assert_eq!(downs.len(), 2);
    for ((crash, restart), down) in crashes.iter().zip(&restarts).zip(&downs) {
        let (branch, _, crash_x, crash_y) = crash;
        assert_eq!(*crash_y, row(branch), "the cross is on {branch}'s line");
        assert_eq!(restart.3, row(branch), "the bar is on {branch}'s line");
        assert!(crash_x < &restart.2, "{branch} restarts after it crashed");
        assert_eq!(down.attribute("data-branch"), Some(branch.as_str()));
        for line in down.children().filter(|n| n.has_tag_name("line")) {
            assert_eq!(attr_f64(line, "x1"), *crash_x);
            assert_eq!(attr_f64(line, "x2"), restart.2);
            assert_eq!(attr_f64(line, "y1"), row(branch));
        }
    }
}

/// A crash can take back a transfer the branch had found in transit (its commit had not
/// completed): the diagram highlights it only where the branch records it again, after the
/// restart, so what is highlighted is still exactly what the report lists.
#[test]
fn what_a_crash_took_back_is_highlighted_only_where_it_was_recorded_again() {
    let scratch = Scratch::new("undone");
    let topology = "3\na 100\nb 100\nc 100\na b\nb a\nb c\nc b\na c\nc a\n";
    let events = "durable all\nsend a b 5\nsend c b 4\ntick\nsnapshot a\nsend a b 3\nsend c b 2\ntick\nsend a b 6\nsend c b 1\ntick\nsend a b 2\nsend c b 3\ntick\ncrash b\ntick\nrestart b\ntick 2\n";
    let seed = 3;
    let topo = snapbank::sim::Topology::parse("t", topology).unwrap();
    let script = snapbank::sim::Script::parse("e", events, &topo).unwrap();
    let mut sim = snapbank::sim::Simulator::with_settings(
        topo,
        snapbank::sim::Delays::seeded(seed),
        script.settings.clone(),
    )
    .unwrap();
    sim.enable_timeline();
    sim.run_script("e", &script).unwrap();
    sim.finish().unwrap();
    assert!(
        sim.timeline()
            .iter()
            .any(|e| matches!(e, snapbank::sim::TimelineEvent::InTransitUndone { .. })),
        "with seed {seed} the crash takes back a transfer found in transit"
    );
    let topo_file = scratch.0.join("undone.topo");
    let events_file = scratch.0.join("undone.events");
    std::fs::write(&topo_file, topology).unwrap();
    std::fs::write(&events_file, events).unwrap();
    let args = vec![
        topo_file.display().to_string(),
        events_file.display().to_string(),
        "--seed".to_string(),
        seed.to_string(),
    ];
    let (stdout, drawing) = run_sim(&args, &scratch.0.join("undone.svg"));
    check_diagram("undone", &drawing, &parse_output(&stdout), 3);
    assert_eq!(
        roxmltree::Document::parse(&drawing)
            .unwrap()
            .descendants()
            .filter(|n| has_class(n, "crash"))
            .count(),
        1
    );
}
