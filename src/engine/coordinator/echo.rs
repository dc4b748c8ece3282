//! Echoes: transactions duplex wrote into a site, read back from that site's log.

use std::collections::HashSet;
use std::sync::Arc;

use duplex_connectors::Transaction;
use duplex_state::StateWriter;

use super::super::EngineError;
use super::super::merge;
use super::super::outbox::{outbox_name, outbox_position};
use super::{Coordinator, Done, load, store_row};

impl Coordinator {
    /// A transaction duplex wrote into site `index`: the site now holds the versions of the
    /// writes that landed; the outbox entries it covers are done.
    pub(super) fn echo(
        &mut self,
        w: &mut StateWriter<'_>,
        index: usize,
        tx: &Transaction,
        done: &mut Done,
    ) -> Result<(), EngineError> {
        let site = self.plan.sites[index].site.name.clone();
        let outbox = outbox_name(&site);
        let Some(upto) = tx
            .events
            .iter()
            .find_map(|event| outbox_position(event, &outbox))
        else {
            // Another outbox's or a one-way link's transaction: nothing of this engine.
            return Ok(());
        };
        let mut landed: HashSet<(String, String)> = HashSet::new();
        for event in &tx.events {
            let Some(mapping) = self.plan.mapping_for(&site, &event.table) else {
                continue;
            };
            for row in [Some(&event.key), event.after.as_ref()]
                .into_iter()
                .flatten()
            {
                let row = mapping
                    .read_row(&site, row)
                    .unwrap_or_else(|_| mapping.canonical_row(&site, row));
                if let Some((_, key)) = mapping.key_of(&row) {
                    landed.insert((mapping.name.clone(), key));
                }
            }
        }
        let covered = self.outboxes[index].up_to(upto);
        // Entries at or before the previous echo read in this attempt, or all of them at the
        // first echo, may have landed in transactions this reader never saw (written before
        // its stream started): only the entries this transaction carried are judged.
        let carried_after = self.last_echo[index].replace(upto);
        let plan = Arc::clone(&self.plan);
        for seq in covered {
            let write = self.outboxes[index].remove(seq).expect("listed above");
            w.remove_pending(&site, seq)?;
            let Some(mapping) = plan.mapping(&write.mapping) else {
                continue;
            };
            tracing::debug!(mapping = %write.mapping, key = %write.key, site = %site, seq, landed = landed.contains(&(write.mapping.clone(), write.key.clone())), "echo");
            if landed.contains(&(write.mapping.clone(), write.key.clone())) {
                self.stats.echoes += 1;
                let (mut rv, mut data) = load(w, mapping, &write.key)?;
                merge::record_echo(&mut rv, &site, &write.vector);
                data.set_held(&site, write.after.clone());
                store_row(w, mapping, &write.key, rv, &data)?;
            } else {
                self.stats.skipped += 1;
                if carried_after.is_some_and(|after| seq > after) {
                    self.skipped(w, mapping, &site, &write, done)?;
                } else {
                    tracing::debug!(mapping = %write.mapping, key = %write.key, site = %site, seq, "write not in this echo; its own transaction was not read in this attempt");
                }
            }
        }
        Ok(())
    }
}
