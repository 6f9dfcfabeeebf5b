//! One branch's money: a balance that can neither go negative nor overflow, whatever arrives.

use super::CoreError;

/// A branch's balance and the balance it started with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ledger {
    /// Money the branch holds now. Kept as u64 so that sums of u32 wire amounts cannot wrap.
    balance: u64,
    /// The balance from `InitBranch`; transfer amounts are a percentage of it.
    initial: u64,
}

impl Ledger {
    /// A ledger holding `balance`, which is also its initial balance.
    pub fn new(balance: u64) -> Self {
        Self {
            balance,
            initial: balance,
        }
    }

    /// A ledger restored from a branch's store: `balance` now, `initial` at `InitBranch`.
    pub fn restore(balance: u64, initial: u64) -> Self {
        Self { balance, initial }
    }

    /// Money held now.
    pub fn balance(&self) -> u64 {
        self.balance
    }

    /// The balance the branch was initialised with.
    pub fn initial(&self) -> u64 {
        self.initial
    }

    /// Takes `amount` out for an outgoing transfer; refuses rather than go negative.
    pub fn withdraw(&mut self, amount: u64) -> Result<(), CoreError> {
        self.balance = self
            .balance
            .checked_sub(amount)
            .ok_or(CoreError::InsufficientFunds {
                balance: self.balance,
                amount,
            })?;
        Ok(())
    }

    /// Adds an incoming transfer; refuses (changing nothing) rather than overflow.
    pub fn deposit(&mut self, amount: u64) -> Result<(), CoreError> {
        self.balance = self
            .balance
            .checked_add(amount)
            .ok_or(CoreError::BalanceOverflow {
                balance: self.balance,
                amount,
            })?;
        Ok(())
    }
}

/// Splits `total` into `parts` integer balances that differ by at most one and sum to exactly
/// `total`: the first `total % parts` parts get the extra unit.
///
/// ```
/// assert_eq!(snapbank::core::split_total(4000, 4), vec![1000; 4]);
/// assert_eq!(snapbank::core::split_total(10, 3), vec![4, 3, 3]);
/// ```
pub fn split_total(total: u64, parts: usize) -> Vec<u64> {
    if parts == 0 {
        return Vec::new();
    }
    let parts_u64 = parts as u64;
    let (base, extra) = (total / parts_u64, total % parts_u64);
    (0..parts_u64)
        .map(|i| base + u64::from(i < extra))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_never_goes_negative() {
        let mut ledger = Ledger::new(10);
        ledger.withdraw(7).unwrap();
        assert_eq!(
            ledger.withdraw(4),
            Err(CoreError::InsufficientFunds {
                balance: 3,
                amount: 4
            })
        );
        assert_eq!(ledger.balance(), 3);
        ledger.withdraw(3).unwrap();
        assert_eq!(ledger.balance(), 0);
        assert_eq!(ledger.initial(), 10);
    }

    #[test]
    fn deposit_refuses_overflow_and_changes_nothing() {
        let mut ledger = Ledger::new(u64::MAX - 1);
        assert!(ledger.deposit(2).is_err());
        assert_eq!(ledger.balance(), u64::MAX - 1);
        ledger.deposit(1).unwrap();
        assert_eq!(ledger.balance(), u64::MAX);
    }

    #[test]
    fn split_total_is_even_and_exact() {
        assert_eq!(split_total(4000, 4), vec![1000; 4]);
        assert_eq!(split_total(10, 3), vec![4, 3, 3]);
        assert_eq!(split_total(2, 5), vec![1, 1, 0, 0, 0]);
        for (total, parts) in [(0, 3), (7, 7), (1_000_003, 64), (u64::from(u32::MAX), 9)] {
            let split = split_total(total, parts);
            assert_eq!(split.iter().sum::<u64>(), total);
            let (min, max) = (split.iter().min().unwrap(), split.iter().max().unwrap());
            assert!(max - min <= 1);
        }
    }
}
