//! `syncdata-producer status`: the checkpoint, pending files, quarantine and
//! halted tables, from local files only (see [`crate::status`]).

use syncdata_core::config::Config;
use syncdata_core::out;

use crate::checkpoint::{CheckpointStore, HaltedTable};

pub fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let status = crate::status(config)?;
    let halted = halted_tables(config)?;
    let text = if json {
        let mut v = serde_json::to_value(&status)?;
        v["halted_tables"] = serde_json::to_value(&halted)?;
        serde_json::to_string_pretty(&v)? + "\n"
    } else {
        let mut text = status.to_string();
        text.push_str(&format!("halted tables: {}\n", halted.len()));
        for h in &halted {
            text.push_str(&format!(
                "  {}.{} held from {} line {}: {}\n",
                h.schema,
                h.table,
                h.file,
                h.line + 1,
                h.reason
            ));
        }
        text
    };
    out!("{text}")?;
    Ok(())
}

/// Tables halted by sanitization, from the checkpoint.
fn halted_tables(config: &Config) -> anyhow::Result<Vec<HaltedTable>> {
    let dir = config.producer_state_dir()?;
    let state = CheckpointStore::new(&dir).load_state()?;
    Ok(state.map(|s| s.halted).unwrap_or_default())
}
