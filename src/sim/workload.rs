//! CLN-shaped changes on CLN's real schema (placeholder: being written).

use super::node::Change;

pub struct Workload {
    seed: u64,
}

impl Workload {
    pub fn new(seed: u64) -> Workload {
        Workload { seed }
    }

    /// lightningd's schema creation, as recorded from a real first start.
    pub fn schema() -> Vec<Change> {
        super::trace::first_start_schema()
            .into_iter()
            .map(|c| match crate::state::classify(c.data_version, &c.writes) {
                Ok(crate::state::CallKind::Txn) => Change::Txn(c.writes[..c.writes.len() - 1].to_vec()),
                _ => Change::InPlace(c.writes[0].clone()),
            })
            .collect()
    }

    pub fn next_change(&mut self) -> Change {
        self.seed += 1;
        Change::Txn(vec![format!("INSERT INTO datastore VALUES (x'{:016x}', x'00', 0)", self.seed)])
    }
}
