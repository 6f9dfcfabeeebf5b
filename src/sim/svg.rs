//! The space-time diagram of a simulated scenario, as SVG (`snapbank-sim --svg FILE`).
//!
//! One horizontal line per branch (topology order, top to bottom); time runs left to right.
//! Each transfer is a solid arrow from its send to its delivery, labelled with its amount; each
//! marker a dashed arrow in its snapshot's colour. A filled dot marks where a branch recorded
//! its state for a snapshot, and the snapshot's cut is a line through those dots. A transfer the
//! receiver recorded as in transit is drawn thick in the snapshot's colour: it crosses the cut
//! forwards (sent before the sender's dot, delivered after the receiver's).
//!
//! Horizontal layout: ticks are columns separated by faint lines. Inside a tick, events take
//! separate positions in the order the simulator ran them (the delivery rule is sequential), so
//! "sent before recording" is visible even within one tick; what a delivery causes (recording,
//! markers sent) shares the delivery's position. Ticks with nothing happening are drawn narrow,
//! so long quiet stretches do not stretch the picture; the SVG has a `viewBox` and scales.
//!
//! A message a cut lost ends where it was lost (`lost`); its resend is drawn as a message of its
//! own (`resent`, with `data-first-sent` where the transfer was first sent). A durable branch's
//! transfer leaves only once the commit holding it is durable: a dotted stretch of the sender's
//! line joins its debit to its departure (`held`), and `data-first-sent` is the debit.
//!
//! A crash is a red cross on the branch's line (`crash`), and the branch's line is broken by a
//! dashed gap while it is down (`down`), up to a green bar where it restarts (`restart`), or to
//! the right edge if it never does. What the crash took back is not drawn: a record the branch
//! had not committed loses its point (the point it records after the restart is drawn), and a
//! transfer it had found in transit is drawn in transit only where it is recorded again.
//!
//! Elements carry classes and `data-` attributes (`message transfer`, `message marker`,
//! `in-transit`, `record`, `cut`, `branch-line`, `crash`, `down`, `restart`) so tests and tools
//! can check the drawing's structure.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;

use super::{Delays, Script, SimError, Simulator, Topology};
use crate::core::SnapshotId;
use crate::sim::timeline::{MessageKind, TimelineEvent};

/// Distinct colours for snapshots (cycled).
const PALETTE: [&str; 8] = [
    "#d9480f", "#2f5fd0", "#1f8a4c", "#9c36b5", "#c2255c", "#0b7285", "#e67700", "#5c940d",
];

/// The narrowest drawing: room for the title and the legend.
const MIN_WIDTH: f64 = 860.0;
/// Vertical distance between branch lines.
const ROW: f64 = 80.0;
/// Room for branch names on the left.
const LEFT: f64 = 96.0;
/// Room for the title and legend above the first branch.
const TOP: f64 = 112.0;
/// Room for the tick axis below the last branch, and on the right.
const BOTTOM: f64 = 44.0;
const RIGHT: f64 = 40.0;
/// Horizontal room per event position, per tick with events at least, and per quiet tick.
const SLOT: f64 = 30.0;
const MIN_TICK: f64 = 72.0;
const QUIET_TICK: f64 = 14.0;

/// Runs a scenario (as `snapbank-sim` does) and draws it. Errors are those of the run.
pub fn draw_scenario(
    topology_file: &str,
    topology_text: &str,
    events_file: &str,
    events_text: &str,
    delays: Delays,
) -> Result<String, SimError> {
    let topology = Topology::parse(topology_file, topology_text)?;
    let script = Script::parse(events_file, events_text, &topology)?;
    let mut sim = Simulator::with_settings(topology, delays, script.settings.clone())
        .map_err(SimError::Run)?;
    sim.enable_timeline();
    sim.run_script(events_file, &script)?;
    sim.finish().map_err(SimError::Run)?;
    let title = format!("{topology_file} · {events_file}");
    Ok(draw(
        &sim.topology().names,
        sim.timeline(),
        sim.snapshot_count(),
        &title,
    ))
}

/// A message with both ends placed.
struct Arrow {
    src: usize,
    dst: usize,
    kind: MessageKind,
    /// Horizontal position of the send.
    from_x: f64,
    /// Of the delivery; `None` if still in flight when the run ended.
    to_x: Option<f64>,
    /// Where it was lost, when a cut of its link lost it in flight.
    lost_x: Option<f64>,
    /// Where the transfer was first sent (its debit), when this arrow is a resend after a cut;
    /// else its own start.
    first_x: f64,
    /// Snapshots that recorded it in transit.
    in_transit: Vec<SnapshotId>,
    /// A resend after a cut or crash.
    resent: bool,
    /// Where it was debited, when it then waited for a commit before leaving.
    debited_x: Option<f64>,
}

/// A crash and the time its branch was down.
struct Down {
    branch: usize,
    /// The crash's tick and position.
    tick: u64,
    x: f64,
    /// The restart's tick and position, if it came.
    restart: Option<(u64, f64)>,
}

/// Draws `timeline` (from a [`Simulator`] with the timeline enabled) of a bank of `names` with
/// `snapshots` snapshots.
pub fn draw(names: &[String], timeline: &[TimelineEvent], snapshots: usize, title: &str) -> String {
    let mut positions = place(timeline);
    // A short scenario is spread out to the narrowest drawing rather than left cramped.
    let room = MIN_WIDTH - LEFT - RIGHT;
    if positions.width > 0.0 && positions.width < room {
        let factor = room / positions.width;
        for x in &mut positions.x {
            *x = LEFT + (*x - LEFT) * factor;
        }
        for (start, width) in &mut positions.ticks {
            *start *= factor;
            *width *= factor;
        }
        positions.width = room;
    }
    let width_ticks = positions.width;
    let plot_right = LEFT + width_ticks;
    let width = plot_right + RIGHT;
    let height = TOP + ROW * names.len().saturating_sub(1) as f64 + BOTTOM;
    let y = |branch: usize| TOP + ROW * branch as f64;

    // Pair sends and deliveries per link, in FIFO order; note each snapshot's recording points.
    let mut arrows: Vec<Arrow> = Vec::new();
    let mut queues: HashMap<(usize, usize), VecDeque<usize>> = HashMap::new();
    let mut by_seq: HashMap<(usize, usize, u64), usize> = HashMap::new();
    // Where each transfer held for a commit was debited.
    let mut debits: HashMap<(usize, usize, u64), f64> = HashMap::new();
    let mut records: BTreeMap<SnapshotId, Vec<(usize, f64)>> = BTreeMap::new();
    let mut initiators: BTreeMap<SnapshotId, (usize, u64)> = BTreeMap::new();
    let mut downs: Vec<Down> = Vec::new();
    for (index, event) in timeline.iter().enumerate() {
        let x = positions.x[index];
        match *event {
            TimelineEvent::Send { src, dst, kind, .. } => {
                queues
                    .entry((src, dst))
                    .or_default()
                    .push_back(arrows.len());
                let (mut first_x, mut resent, mut debited_x) = (x, false, None);
                if let MessageKind::Transfer { seq, .. } = kind {
                    if let Some(earlier) = by_seq.insert((src, dst, seq), arrows.len()) {
                        first_x = arrows[earlier].first_x;
                        resent = true;
                    } else if let Some(debit) = debits.remove(&(src, dst, seq)) {
                        first_x = debit;
                        debited_x = Some(debit);
                    }
                }
                arrows.push(Arrow {
                    first_x,
                    src,
                    dst,
                    kind,
                    from_x: x,
                    to_x: None,
                    lost_x: None,
                    in_transit: Vec::new(),
                    resent,
                    debited_x,
                });
            }
            TimelineEvent::Debit { src, dst, seq, .. } => {
                // A later debit of the same number replaces one a crash took back.
                debits.insert((src, dst, seq), x);
            }
            TimelineEvent::Deliver { src, dst, .. } => {
                if let Some(arrow) = queues.get_mut(&(src, dst)).and_then(VecDeque::pop_front) {
                    arrows[arrow].to_x = Some(x);
                }
            }
            TimelineEvent::Cut { src, dst, .. } => {
                for arrow in queues.entry((src, dst)).or_default().drain(..) {
                    arrows[arrow].lost_x = Some(x);
                }
            }
            TimelineEvent::Record {
                branch,
                snapshot,
                tick,
            } => {
                let points = records.entry(snapshot).or_default();
                if points.is_empty() {
                    initiators.insert(snapshot, (branch, tick));
                }
                points.push((branch, x));
            }
            TimelineEvent::InTransit {
                snapshot,
                src,
                dst,
                seq,
            } => {
                if let Some(&arrow) = by_seq.get(&(src, dst, seq)) {
                    arrows[arrow].in_transit.push(snapshot);
                }
            }
            TimelineEvent::InTransitUndone {
                snapshot,
                src,
                dst,
                seq,
            } => {
                if let Some(&arrow) = by_seq.get(&(src, dst, seq)) {
                    arrows[arrow].in_transit.retain(|&s| s != snapshot);
                }
            }
            TimelineEvent::Unrecord { snapshot, branch } => {
                if let Some(points) = records.get_mut(&snapshot) {
                    points.retain(|&(b, _)| b != branch);
                }
            }
            TimelineEvent::Crash { tick, branch } => downs.push(Down {
                branch,
                tick,
                x,
                restart: None,
            }),
            TimelineEvent::Restart { tick, branch } => {
                if let Some(down) = downs
                    .iter_mut()
                    .rev()
                    .find(|down| down.branch == branch && down.restart.is_none())
                {
                    down.restart = Some((tick, x));
                }
            }
        }
    }

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<defs><marker id="head" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#333"/></marker>"##
    );
    for (index, colour) in PALETTE.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<marker id="head{index}" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>"#
        );
    }
    svg.push_str("</defs>\n");
    let _ = writeln!(
        svg,
        r##"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="#fff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="12" y="22" font-size="15" font-weight="bold">Space-time diagram: {}</text>"#,
        escape(title)
    );
    legend(&mut svg, names, snapshots, &initiators, !downs.is_empty());

    // Tick columns and the axis.
    let axis_y = height - BOTTOM + 18.0;
    for (tick, &(start, tick_width)) in positions.ticks.iter().enumerate() {
        let x = LEFT + start;
        let _ = writeln!(
            svg,
            r##"<line class="tick" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#eceef2"/>"##,
            TOP - 16.0,
            height - BOTTOM + 6.0
        );
        if tick_width >= MIN_TICK || tick % 5 == 0 {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{axis_y:.1}" text-anchor="middle" fill="#6b7385" font-size="11">{tick}</text>"##,
                x + tick_width / 2.0
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#6b7385" font-size="11">tick →</text>"##,
        plot_right + RIGHT - 4.0,
        axis_y + 14.0
    );

    // Branch lines.
    for (branch, name) in names.iter().enumerate() {
        let y = y(branch);
        let _ = writeln!(
            svg,
            r##"<line class="branch-line" data-branch="{}" x1="{LEFT:.1}" y1="{y:.1}" x2="{plot_right:.1}" y2="{y:.1}" stroke="#1d2330" stroke-width="1.5"/>"##,
            escape(name)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="bold" font-size="13">{}</text>"#,
            LEFT - 10.0,
            y + 4.0,
            escape(name)
        );
    }

    // Gaps in the lines of branches that were down.
    for &Down {
        branch,
        tick: from_tick,
        x: from_x,
        restart,
    } in &downs
    {
        let y = y(branch);
        let (to_x, until) = match restart {
            Some((tick, x)) => (x, format!("until it restarts at tick {tick}")),
            None => (plot_right, "to the end".to_string()),
        };
        let _ = writeln!(
            svg,
            r##"<g class="down" data-branch="{name}" data-from-tick="{from_tick}"><title>{name} is down from tick {from_tick} {until}</title><line x1="{from_x:.1}" y1="{y:.1}" x2="{to_x:.1}" y2="{y:.1}" stroke="#fff" stroke-width="4"/><line x1="{from_x:.1}" y1="{y:.1}" x2="{to_x:.1}" y2="{y:.1}" stroke="#c92a2a" stroke-opacity="0.6" stroke-width="1.5" stroke-dasharray="2 5"/></g>"##,
            name = escape(&names[branch]),
        );
    }

    // Cuts under the messages, so arrows stay readable.
    for (&snapshot, points) in &records {
        let colour = colour(snapshot);
        let mut sorted = points.clone();
        sorted.sort_by_key(|&(branch, _)| branch);
        let coordinates: Vec<String> = sorted
            .iter()
            .map(|&(branch, x)| format!("{x:.1},{:.1}", y(branch)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline class="cut" data-snapshot="{snapshot}" points="{}" fill="none" stroke="{colour}" stroke-width="7" stroke-opacity="0.28" stroke-linejoin="round"/>"#,
            coordinates.join(" ")
        );
        if let Some(&(branch, x)) = sorted.first() {
            // Staggered, so cuts starting close together keep their labels apart.
            let lift = 14.0 + 13.0 * f64::from(snapshot % 3);
            let _ = writeln!(
                svg,
                r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="{colour}" font-weight="bold" stroke="#fff" stroke-width="3" paint-order="stroke">cut S{snapshot}</text>"##,
                y(branch) - lift
            );
        }
    }

    // Messages: markers first, then transfers on top.
    for arrow in arrows
        .iter()
        .filter(|a| matches!(a.kind, MessageKind::Marker { .. }))
    {
        let MessageKind::Marker { snapshot } = arrow.kind else {
            continue;
        };
        let (x2, open) = end(arrow, plot_right);
        let index = snapshot as usize % PALETTE.len();
        let _ = writeln!(
            svg,
            r#"<g class="message marker{open}" data-src="{}" data-dst="{}" data-snapshot="{snapshot}"><title>marker S{snapshot}: {} → {}</title><line x1="{:.1}" y1="{:.1}" x2="{x2:.1}" y2="{:.1}" stroke="{}" stroke-width="1.3" stroke-dasharray="5 4" marker-end="url(#head{index})"/></g>"#,
            escape(&names[arrow.src]),
            escape(&names[arrow.dst]),
            escape(&names[arrow.src]),
            escape(&names[arrow.dst]),
            arrow.from_x,
            y(arrow.src),
            y(arrow.dst),
            PALETTE[index],
        );
    }
    for arrow in &arrows {
        let MessageKind::Transfer { seq, amount } = arrow.kind else {
            continue;
        };
        let (x2, open) = end(arrow, plot_right);
        let (y1, y2) = (y(arrow.src), y(arrow.dst));
        let (stroke, width, head, class) = match arrow.in_transit.first() {
            Some(&snapshot) => (
                colour(snapshot),
                3.2,
                format!("head{}", snapshot as usize % PALETTE.len()),
                " in-transit",
            ),
            None => ("#333", 1.4, "head".to_string(), ""),
        };
        let snapshots: Vec<String> = arrow.in_transit.iter().map(u32::to_string).collect();
        let recorded = if snapshots.is_empty() {
            String::new()
        } else {
            format!(
                "; recorded in transit by S{}",
                arrow
                    .in_transit
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", S")
            )
        };
        // The label sits a third of the way along, so labels of arrows sent at different
        // moments do not land on each other.
        let lx = arrow.from_x + (x2 - arrow.from_x) / 3.0;
        let resent = if arrow.resent { " resent" } else { "" };
        if let Some(debit) = arrow.debited_x {
            let _ = writeln!(
                svg,
                r##"<line class="held" data-src="{}" data-dst="{}" data-seq="{seq}" x1="{debit:.1}" y1="{y1:.1}" x2="{:.1}" y2="{y1:.1}" stroke="{stroke}" stroke-width="2" stroke-dasharray="1 3"><title>transfer #{seq} debited here, sent once its commit is durable</title></line>"##,
                escape(&names[arrow.src]),
                escape(&names[arrow.dst]),
                arrow.from_x,
            );
        }
        let ly = y1 + (y2 - y1) / 3.0;
        let label = if arrow.in_transit.is_empty() {
            amount.to_string()
        } else {
            format!("{amount} (S{})", snapshots.join(",S"))
        };
        let _ = writeln!(
            svg,
            r##"<g class="message transfer{class}{open}{resent}" data-src="{src}" data-dst="{dst}" data-seq="{seq}" data-amount="{amount}" data-first-sent="{:.1}" data-in-transit="{}"><title>transfer #{seq} of {amount}: {src} → {dst}{recorded}</title><line x1="{:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}" marker-end="url(#{head})"/><text x="{lx:.1}" y="{:.1}" text-anchor="middle" font-weight="bold" fill="{}" stroke="#fff" stroke-width="3" paint-order="stroke">{label}</text></g>"##,
            arrow.first_x,
            snapshots.join(" "),
            arrow.from_x,
            ly - 4.0,
            if arrow.in_transit.is_empty() {
                "#1d2330"
            } else {
                stroke
            },
            src = escape(&names[arrow.src]),
            dst = escape(&names[arrow.dst]),
        );
    }

    // Recording points on top of everything.
    for (&snapshot, points) in &records {
        for &(branch, x) in points {
            let _ = writeln!(
                svg,
                r##"<circle class="record" data-snapshot="{snapshot}" data-branch="{}" cx="{x:.1}" cy="{:.1}" r="5.5" fill="{}" stroke="#fff" stroke-width="1.5"><title>{} records its state for S{snapshot}</title></circle>"##,
                escape(&names[branch]),
                y(branch),
                colour(snapshot),
                escape(&names[branch]),
            );
        }
    }
    // Crashes and restarts on top.
    for &Down {
        branch,
        tick,
        x,
        restart,
    } in &downs
    {
        let (y, name) = (y(branch), escape(&names[branch]));
        let _ = writeln!(
            svg,
            r##"<g class="crash" data-branch="{name}" data-tick="{tick}"><title>{name} crashes at tick {tick}: what it had not committed is lost</title><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#c92a2a" stroke-width="3"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#c92a2a" stroke-width="3"/></g>"##,
            x - 7.0,
            y - 7.0,
            x + 7.0,
            y + 7.0,
            x - 7.0,
            y + 7.0,
            x + 7.0,
            y - 7.0,
        );
        if let Some((tick, x)) = restart {
            let _ = writeln!(
                svg,
                r##"<g class="restart" data-branch="{name}" data-tick="{tick}"><title>{name} restarts from its store at tick {tick}</title><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#1f8a4c" stroke-width="3"/></g>"##,
                y - 9.0,
                y + 9.0,
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// Where an arrow ends: at its delivery, where a cut lost it, or at the right edge (open) if
/// still in flight.
fn end(arrow: &Arrow, plot_right: f64) -> (f64, &'static str) {
    match (arrow.to_x, arrow.lost_x) {
        (Some(x), _) => (x, ""),
        (None, Some(x)) => (x, " lost"),
        (None, None) => (plot_right + RIGHT / 2.0, " undelivered"),
    }
}

fn colour(snapshot: SnapshotId) -> &'static str {
    PALETTE[snapshot as usize % PALETTE.len()]
}

/// The key: what each line style means, and each snapshot's colour and initiator.
fn legend(
    svg: &mut String,
    names: &[String],
    snapshots: usize,
    initiators: &BTreeMap<SnapshotId, (usize, u64)>,
    crashes: bool,
) {
    let y = 44.0;
    let _ = writeln!(
        svg,
        r##"<g class="legend" font-size="11"><line x1="12" y1="{y}" x2="40" y2="{y}" stroke="#333" stroke-width="1.4" marker-end="url(#head)"/><text x="46" y="{:.0}">transfer (amount)</text><line x1="160" y1="{y}" x2="188" y2="{y}" stroke="#333" stroke-width="1.3" stroke-dasharray="5 4"/><text x="194" y="{:.0}">marker (snapshot colour)</text><line x1="350" y1="{y}" x2="378" y2="{y}" stroke="#d9480f" stroke-width="3.2"/><text x="384" y="{:.0}">recorded in transit</text><circle cx="512" cy="{y}" r="5" fill="#d9480f"/><text x="522" y="{:.0}">recording point; the band through them is the cut</text></g>"##,
        y + 4.0,
        y + 4.0,
        y + 4.0,
        y + 4.0
    );
    let mut x = 12.0;
    for snapshot in 0..snapshots {
        let Ok(id) = SnapshotId::try_from(snapshot) else {
            break;
        };
        let started = initiators
            .get(&id)
            .map(|&(branch, tick)| format!(" by {} at tick {tick}", escape(&names[branch])))
            .unwrap_or_default();
        let text = format!("S{id}{started}");
        let _ = writeln!(
            svg,
            r#"<g class="legend"><rect x="{x:.0}" y="{:.0}" width="14" height="8" fill="{}"/><text x="{:.0}" y="{:.0}" font-size="11">{text}</text></g>"#,
            y + 14.0,
            colour(id),
            x + 18.0,
            y + 22.0
        );
        x += 36.0 + 7.5 * text.len() as f64;
    }
    if crashes {
        let (cx, cy) = (x + 5.0, y + 18.0);
        let _ = writeln!(
            svg,
            r##"<g class="legend"><line x1="{:.0}" y1="{:.0}" x2="{:.0}" y2="{:.0}" stroke="#c92a2a" stroke-width="2.5"/><line x1="{:.0}" y1="{:.0}" x2="{:.0}" y2="{:.0}" stroke="#c92a2a" stroke-width="2.5"/><text x="{:.0}" y="{:.0}" font-size="11">crash; dashed: down until the green bar (restart)</text></g>"##,
            cx - 5.0,
            cy - 5.0,
            cx + 5.0,
            cy + 5.0,
            cx - 5.0,
            cy + 5.0,
            cx + 5.0,
            cy - 5.0,
            cx + 12.0,
            y + 22.0
        );
    }
}

/// Horizontal positions of every timeline event, and each tick's column.
struct Positions {
    /// Per event, its x (relative to the plot's left edge added later: absolute here).
    x: Vec<f64>,
    /// Per tick, `(start, width)` relative to the plot's left edge.
    ticks: Vec<(f64, f64)>,
    /// The plot's width.
    width: f64,
}

/// Gives each event a position: a new one per delivery, transfer sent and recording that no
/// delivery caused; markers sent and recordings caused by what just happened at the same branch
/// share its position.
fn place(timeline: &[TimelineEvent]) -> Positions {
    let last_tick = timeline.iter().filter_map(tick_of).max().unwrap_or(0);
    let ticks = usize::try_from(last_tick).unwrap_or(0) + 1;
    // Slot of each event within its tick, and how many slots each tick has.
    let mut slot_of = vec![0usize; timeline.len()];
    let mut slots = vec![0usize; ticks];
    // The branch whose moment the current slot is, and the tick of the previous event.
    let mut current: Option<(u64, usize)> = None;
    let mut last_tick_seen = 0u64;
    for (index, event) in timeline.iter().enumerate() {
        let tick = tick_of(event).unwrap_or(last_tick_seen);
        last_tick_seen = tick;
        let t = usize::try_from(tick).unwrap_or(0);
        let joins = match *event {
            // A marker goes out the moment its branch records (same slot); a recording joins
            // the delivery of the marker that caused it.
            TimelineEvent::Send {
                src,
                kind: MessageKind::Marker { .. },
                ..
            } => current == Some((tick, src)),
            TimelineEvent::Record { branch, .. } => {
                current == Some((tick, branch))
                    && index > 0
                    && matches!(timeline[index - 1], TimelineEvent::Deliver { dst, .. } if dst == branch)
            }
            TimelineEvent::InTransit { .. }
            | TimelineEvent::InTransitUndone { .. }
            | TimelineEvent::Unrecord { .. } => true,
            TimelineEvent::Send { .. }
            | TimelineEvent::Debit { .. }
            | TimelineEvent::Deliver { .. }
            | TimelineEvent::Cut { .. }
            | TimelineEvent::Crash { .. }
            | TimelineEvent::Restart { .. } => false,
        };
        if !joins || slots[t] == 0 {
            slots[t] += 1;
        }
        slot_of[index] = slots[t] - 1;
        current = match *event {
            TimelineEvent::Send { src, .. }
            | TimelineEvent::Debit { src, .. }
            | TimelineEvent::Cut { src, .. } => Some((tick, src)),
            TimelineEvent::Deliver { dst, .. } => Some((tick, dst)),
            TimelineEvent::Record { branch, .. }
            | TimelineEvent::Crash { branch, .. }
            | TimelineEvent::Restart { branch, .. } => Some((tick, branch)),
            TimelineEvent::InTransit { .. }
            | TimelineEvent::InTransitUndone { .. }
            | TimelineEvent::Unrecord { .. } => current,
        };
    }
    let mut columns = Vec::with_capacity(ticks);
    let mut start = 0.0;
    for &count in &slots {
        let width = if count == 0 {
            QUIET_TICK
        } else {
            (count as f64 * SLOT).max(MIN_TICK)
        };
        columns.push((start, width));
        start += width;
    }
    let mut last = 0u64;
    let x = timeline
        .iter()
        .enumerate()
        .map(|(index, event)| {
            let tick = tick_of(event).unwrap_or(last);
            last = tick;
            let t = usize::try_from(tick).unwrap_or(0);
            let (column, width) = columns[t];
            let per_slot = width / slots[t].max(1) as f64;
            LEFT + column + per_slot * (slot_of[index] as f64 + 0.5)
        })
        .collect();
    Positions {
        x,
        ticks: columns,
        width: start,
    }
}

fn tick_of(event: &TimelineEvent) -> Option<u64> {
    match *event {
        TimelineEvent::Send { tick, .. }
        | TimelineEvent::Debit { tick, .. }
        | TimelineEvent::Deliver { tick, .. }
        | TimelineEvent::Cut { tick, .. }
        | TimelineEvent::Record { tick, .. }
        | TimelineEvent::Crash { tick, .. }
        | TimelineEvent::Restart { tick, .. } => Some(tick),
        TimelineEvent::InTransit { .. }
        | TimelineEvent::InTransitUndone { .. }
        | TimelineEvent::Unrecord { .. } => None,
    }
}

/// Text for XML content and attribute values.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPOLOGY: &str = "2\na 100\nb 50\na b\nb a\n";

    fn fifo_marker() -> String {
        draw_scenario(
            "t",
            TOPOLOGY,
            "e",
            "send a b 10\nsnapshot a\ntick\nsend b a 5\ntick 5\n",
            Delays::parse_list("d", "2\n1\n1\n1\n").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_marker_waits_behind_the_transfer_and_the_reply_is_in_transit() {
        let svg = fifo_marker();
        assert_eq!(svg.matches(r#"class="message transfer"#).count(), 2);
        assert_eq!(svg.matches(r#"class="message marker"#).count(), 2);
        assert_eq!(svg.matches(r#"class="cut""#).count(), 1);
        assert_eq!(svg.matches(r#"class="record""#).count(), 2);
        // b -> a token(5) is the one transfer in transit for S0, and is labelled so.
        assert_eq!(svg.matches("transfer in-transit").count(), 1);
        assert!(svg.contains(
            r#"data-src="b" data-dst="a" data-seq="1" data-amount="5" data-first-sent="#
        ));
        assert!(svg.contains(r#"data-in-transit="0""#));
        assert!(svg.contains(">5 (S0)</text>"));
        assert!(svg.contains(
            r#"data-src="a" data-dst="b" data-seq="1" data-amount="10" data-first-sent="#
        ));
    }

    #[test]
    fn within_a_tick_a_send_before_recording_is_drawn_before_it() {
        // a sends, then records, in tick 0: the transfer starts left of a's recording point.
        let topology = Topology::parse("t", TOPOLOGY).unwrap();
        let mut sim = Simulator::new(topology, Delays::seeded(1));
        sim.enable_timeline();
        sim.send(0, 1, 10).unwrap();
        sim.start_snapshot(0).unwrap();
        let positions = place(sim.timeline());
        let send = sim
            .timeline()
            .iter()
            .position(|e| {
                matches!(
                    e,
                    TimelineEvent::Send {
                        kind: MessageKind::Transfer { .. },
                        ..
                    }
                )
            })
            .unwrap();
        let record = sim
            .timeline()
            .iter()
            .position(|e| matches!(e, TimelineEvent::Record { .. }))
            .unwrap();
        let marker = sim
            .timeline()
            .iter()
            .position(|e| {
                matches!(
                    e,
                    TimelineEvent::Send {
                        kind: MessageKind::Marker { .. },
                        ..
                    }
                )
            })
            .unwrap();
        assert!(positions.x[send] < positions.x[record]);
        assert_eq!(
            positions.x[record], positions.x[marker],
            "markers go out as it records"
        );
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape("a<b>&\"c"), "a&lt;b&gt;&amp;&quot;c");
    }
}
