//! The consistent-cut checker.
//!
//! "Balances plus in-transit money equal the total" can hold by accident while the cut is wrong
//! (two opposite transfers of the same amount cancel out). With the per-channel counters every
//! snapbank record carries, the checker proves more. For each channel `i -> j`, with `S` what `i`
//! had sent on it before `i`'s cut and `R` what `j` had received on it before `j`'s cut:
//!
//! - **no receipt from the future** ([`Rule::ReceivedAfterSenderCut`]): `R <= S`, in count and
//!   in amount; otherwise `j` received before its cut a transfer that `i` sent after its own.
//! - **exact in-transit record** ([`Rule::InTransitSequence`], [`Rule::InTransitAmount`]):
//!   the transfers `j` recorded in transit are exactly numbers `R+1 ..= S`, in order, and their
//!   amounts are the ones `i` sent: they add up to what `i` sent in that range, and `j`'s digest
//!   at its cut extended by them equals `i`'s digest at its cut (see
//!   [`super::branch::chain_digest`]).
//! - **consistent channel sum** ([`Rule::ChannelSum`]): the channel's reported money in transit
//!   is the sum of the transfers listed.
//! - **conservation**: balances plus money in transit equal the bank's total.
//!
//! A channel whose ends did not report counters (a branch speaking only the original schema) is
//! checked by the sum alone, and the audit says so.

use std::fmt;

use super::{ChannelCount, chain_digest};

/// What the two ends of one directed channel recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelEvidence {
    /// Index of the sending branch.
    pub from: usize,
    /// Index of the receiving branch.
    pub to: usize,
    /// Money in transit on the channel, as the receiver reported it (`channel_state`).
    pub recorded_sum: u64,
    /// The counters, when both ends reported them.
    pub counters: Option<ChannelCounters>,
}

impl ChannelEvidence {
    /// The evidence of the channel from branch `from` to branch `to`, out of their records of
    /// one snapshot: the channel is outgoing channel `out` of the sender and incoming channel
    /// `incoming` of the receiver, as their nodes number them.
    pub fn between(
        (from, sender, out): (usize, &crate::core::SnapshotRecord, usize),
        (to, receiver, incoming): (usize, &crate::core::SnapshotRecord, usize),
    ) -> Self {
        Self {
            from,
            to,
            recorded_sum: receiver.channel_state()[incoming],
            counters: Some(ChannelCounters {
                sent: sender.sent()[out],
                received: receiver.received()[incoming],
                in_transit: receiver
                    .in_transit()
                    .iter()
                    .filter(|t| t.from == incoming)
                    .map(|t| (t.seq, t.amount))
                    .collect(),
            }),
        }
    }
}

/// The consistent-cut evidence of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelCounters {
    /// Sent by the sender before its cut.
    pub sent: ChannelCount,
    /// Received by the receiver before its cut.
    pub received: ChannelCount,
    /// `(sequence number, amount)` of each transfer the receiver recorded in transit, in the
    /// order it arrived.
    pub in_transit: Vec<(u64, u64)>,
}

/// Everything recorded for one snapshot, across the bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutEvidence {
    /// Branch names, indexed like `from`/`to`.
    pub names: Vec<String>,
    /// Each branch's recorded balance.
    pub balances: Vec<u64>,
    /// Every channel of the topology.
    pub channels: Vec<ChannelEvidence>,
    /// The money the bank holds.
    pub expected_total: u64,
}

/// A rule of a consistent cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The receiver got, before its cut, a transfer the sender sent after its own cut.
    ReceivedAfterSenderCut,
    /// The in-transit record is not exactly the transfers sent before the sender's cut and
    /// received after the receiver's, in order.
    InTransitSequence,
    /// The in-transit amounts do not add up to what the sender sent in that range.
    InTransitAmount,
    /// The channel's reported sum is not the sum of the transfers listed.
    ChannelSum,
}

impl Rule {
    /// A short stable name, used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Rule::ReceivedAfterSenderCut => "received-after-sender-cut",
            Rule::InTransitSequence => "in-transit-sequence",
            Rule::InTransitAmount => "in-transit-amount",
            Rule::ChannelSum => "channel-sum",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken rule on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The sending branch's name.
    pub from: String,
    /// The receiving branch's name.
    pub to: String,
    /// Which rule.
    pub rule: Rule,
    /// The figures that break it.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}->{} {}: {}",
            self.from, self.to, self.rule, self.detail
        )
    }
}

/// The checker's conclusion about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Balances plus money in transit.
    pub total: u64,
    /// The money the bank holds.
    pub expected_total: u64,
    /// Every broken channel rule, in channel order.
    pub violations: Vec<Violation>,
    /// Channels checked with counters.
    pub checked_channels: usize,
    /// Channels checked by the sum alone, `(from, to)`.
    pub unchecked_channels: Vec<(String, String)>,
}

impl Audit {
    /// Checks every channel of `evidence` and the conservation of money.
    pub fn check(evidence: &CutEvidence) -> Self {
        let name = |index: usize| {
            evidence
                .names
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("#{index}"))
        };
        let mut total = evidence
            .balances
            .iter()
            .fold(0u64, |sum, &b| sum.saturating_add(b));
        let mut violations = Vec::new();
        let mut checked_channels = 0;
        let mut unchecked_channels = Vec::new();
        for channel in &evidence.channels {
            total = total.saturating_add(channel.recorded_sum);
            let (from, to) = (name(channel.from), name(channel.to));
            let Some(counters) = &channel.counters else {
                unchecked_channels.push((from, to));
                continue;
            };
            checked_channels += 1;
            for (rule, detail) in check_channel(&from, &to, channel.recorded_sum, counters) {
                violations.push(Violation {
                    from: from.clone(),
                    to: to.clone(),
                    rule,
                    detail,
                });
            }
        }
        Self {
            total,
            expected_total: evidence.expected_total,
            violations,
            checked_channels,
            unchecked_channels,
        }
    }

    /// Whether money is conserved.
    pub fn sums_to_total(&self) -> bool {
        self.total == self.expected_total
    }

    /// Whether no checked channel broke a rule.
    pub fn is_consistent(&self) -> bool {
        self.violations.is_empty()
    }

    /// Whether the snapshot is proven a consistent cut: every channel checked with counters, none
    /// broke a rule, and money is conserved.
    pub fn is_proven(&self) -> bool {
        self.is_consistent() && self.sums_to_total() && self.unchecked_channels.is_empty()
    }
}

fn check_channel(
    from: &str,
    to: &str,
    recorded_sum: u64,
    counters: &ChannelCounters,
) -> Vec<(Rule, String)> {
    let ChannelCounters {
        sent,
        received,
        in_transit,
    } = counters;
    let mut broken = Vec::new();
    let listed_amount = in_transit
        .iter()
        .fold(0u64, |sum, &(_, amount)| sum.saturating_add(amount));
    if received.count > sent.count || received.amount > sent.amount {
        broken.push((
            Rule::ReceivedAfterSenderCut,
            format!(
                "{to} had received {} transfers ({}) before its cut, but {from} had sent only {} ({}) before its own",
                received.count, received.amount, sent.count, sent.amount
            ),
        ));
    } else {
        let expected = received.count.saturating_add(1)..=sent.count;
        let in_order = in_transit.len() as u64 == sent.count - received.count
            && in_transit.iter().map(|&(seq, _)| seq).eq(expected.clone());
        if !in_order {
            broken.push((
                Rule::InTransitSequence,
                format!(
                    "recorded transfers {} in transit, expected {}",
                    list_seqs(in_transit),
                    describe_range(expected)
                ),
            ));
        }
        let sent_after = sent.amount - received.amount;
        let folded = in_transit
            .iter()
            .fold(received.digest, |digest, &(seq, amount)| {
                chain_digest(digest, seq, amount)
            });
        if listed_amount != sent_after {
            broken.push((
                Rule::InTransitAmount,
                format!(
                    "recorded {listed_amount} in transit, but {from} sent {sent_after} before its cut that {to} received after its own"
                ),
            ));
        } else if in_order && folded != sent.digest {
            broken.push((
                Rule::InTransitAmount,
                format!(
                    "the amounts recorded in transit add up to {listed_amount}, but are not, one by one, the amounts {from} sent"
                ),
            ));
        }
    }
    if recorded_sum != listed_amount {
        broken.push((
            Rule::ChannelSum,
            format!(
                "reported {recorded_sum} in transit, but the transfers listed add up to {listed_amount}"
            ),
        ));
    }
    broken
}

/// `#4 #5 #5` style, shortened past a handful.
fn list_seqs(in_transit: &[(u64, u64)]) -> String {
    if in_transit.is_empty() {
        return "none".to_string();
    }
    const SHOWN: usize = 6;
    let mut text: Vec<String> = in_transit
        .iter()
        .take(SHOWN)
        .map(|(seq, _)| format!("#{seq}"))
        .collect();
    if in_transit.len() > SHOWN {
        text.push(format!("... ({} in all)", in_transit.len()));
    }
    text.join(" ")
}

fn describe_range(range: std::ops::RangeInclusive<u64>) -> String {
    match (range.start(), range.end()) {
        (start, end) if start > end => "none".to_string(),
        (start, end) if start == end => format!("#{start}"),
        (start, end) => format!("#{start}..=#{end}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts after transfers of `amounts`, in order.
    fn after(amounts: &[u64]) -> ChannelCount {
        amounts
            .iter()
            .fold(ChannelCount::default(), |count, &amount| {
                count.after(amount)
            })
    }

    /// Two branches, a and b; a->b has transfer #3 (5) in transit, b->a is quiet. Total 100.
    fn honest() -> CutEvidence {
        CutEvidence {
            names: vec!["a".into(), "b".into()],
            balances: vec![45, 50],
            channels: vec![
                ChannelEvidence {
                    from: 0,
                    to: 1,
                    recorded_sum: 5,
                    counters: Some(ChannelCounters {
                        sent: after(&[4, 3, 5]),
                        received: after(&[4, 3]),
                        in_transit: vec![(3, 5)],
                    }),
                },
                ChannelEvidence {
                    from: 1,
                    to: 0,
                    recorded_sum: 0,
                    counters: Some(ChannelCounters {
                        sent: after(&[4]),
                        received: after(&[4]),
                        in_transit: vec![],
                    }),
                },
            ],
            expected_total: 100,
        }
    }

    fn rules(audit: &Audit) -> Vec<(String, Rule)> {
        audit
            .violations
            .iter()
            .map(|v| (format!("{}->{}", v.from, v.to), v.rule))
            .collect()
    }

    #[test]
    fn an_honest_cut_is_proven() {
        let audit = Audit::check(&honest());
        assert!(audit.is_proven(), "{audit:?}");
        assert_eq!(audit.checked_channels, 2);
        assert_eq!(audit.total, 100);
    }

    #[test]
    fn a_transfer_counted_twice_is_caught() {
        let mut evidence = honest();
        let channel = &mut evidence.channels[0];
        channel.counters.as_mut().unwrap().in_transit = vec![(3, 5), (3, 5)];
        channel.recorded_sum = 10;
        evidence.balances[0] -= 5; // even with the total made to balance
        let audit = Audit::check(&evidence);
        assert!(audit.sums_to_total());
        assert_eq!(
            rules(&audit),
            vec![
                ("a->b".into(), Rule::InTransitSequence),
                ("a->b".into(), Rule::InTransitAmount)
            ]
        );
        assert_eq!(
            audit.violations[0].to_string(),
            "a->b in-transit-sequence: recorded transfers #3 #3 in transit, expected #3"
        );
    }

    #[test]
    fn a_channel_closed_early_is_caught() {
        let mut evidence = honest();
        let channel = &mut evidence.channels[0];
        channel.counters.as_mut().unwrap().in_transit.clear();
        channel.recorded_sum = 0;
        let audit = Audit::check(&evidence);
        assert!(!audit.sums_to_total());
        assert_eq!(
            rules(&audit),
            vec![
                ("a->b".into(), Rule::InTransitSequence),
                ("a->b".into(), Rule::InTransitAmount)
            ]
        );
    }

    #[test]
    fn opposite_transfers_that_cancel_out_are_caught() {
        // b received, before its cut, a's transfer #4 (5), which a sent after its cut; and b's
        // own 5 to a is counted neither as sent before b's cut nor in transit. Sum: 100, fine.
        let mut evidence = honest();
        evidence.channels[0].counters = Some(ChannelCounters {
            sent: after(&[4, 3, 5]),
            received: after(&[4, 3, 5, 5]),
            in_transit: vec![],
        });
        evidence.channels[0].recorded_sum = 0;
        evidence.balances = vec![50, 50];
        let audit = Audit::check(&evidence);
        assert!(audit.sums_to_total());
        assert!(!audit.is_proven());
        assert_eq!(
            rules(&audit),
            vec![("a->b".into(), Rule::ReceivedAfterSenderCut)]
        );
        assert!(
            audit.violations[0]
                .detail
                .contains("b had received 4 transfers (17)")
        );
    }

    #[test]
    fn amounts_that_add_up_but_differ_one_by_one_are_caught() {
        // a sent #3 (5) and #4 (1) after b's cut; b records #3 (3) and #4 (3): same sum.
        let mut evidence = honest();
        let channel = &mut evidence.channels[0];
        let counters = channel.counters.as_mut().unwrap();
        counters.sent = after(&[4, 3, 5, 1]);
        counters.in_transit = vec![(3, 3), (4, 3)];
        channel.recorded_sum = 6;
        evidence.balances[0] -= 1;
        let audit = Audit::check(&evidence);
        assert!(audit.sums_to_total(), "{audit:?}");
        assert_eq!(rules(&audit), vec![("a->b".into(), Rule::InTransitAmount)]);
        assert!(audit.violations[0].detail.contains("not, one by one"));
        // The honest version of the same channel passes.
        let counters = evidence.channels[0].counters.as_mut().unwrap();
        counters.in_transit = vec![(3, 5), (4, 1)];
        assert!(Audit::check(&evidence).is_proven());
    }

    #[test]
    fn a_reported_sum_that_disagrees_with_the_list_is_caught() {
        let mut evidence = honest();
        evidence.channels[1].recorded_sum = 3;
        evidence.balances[1] -= 3;
        let audit = Audit::check(&evidence);
        assert_eq!(rules(&audit), vec![("b->a".into(), Rule::ChannelSum)]);
    }

    #[test]
    fn channels_without_counters_fall_back_to_the_sum() {
        let mut evidence = honest();
        evidence.channels[1].counters = None;
        let audit = Audit::check(&evidence);
        assert!(audit.is_consistent() && audit.sums_to_total());
        assert!(!audit.is_proven());
        assert_eq!(audit.unchecked_channels, vec![("b".into(), "a".into())]);
    }
}
