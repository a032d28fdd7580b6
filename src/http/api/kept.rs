//! What a run search keeps of the runs it evaluated, for the runs it answers: the attributes and
//! traces evaluation read, within `query.run_search_kept_bytes`, tagged with the snapshot they came
//! from, so a run is not read twice and an answer never mixes two snapshots.

use std::mem::size_of;

use crate::storage::value::Value;

use super::read::{Contexts, RunData, Trace};

/// A matched run: its data, the snapshot generation it was read in, and which of its attributes
/// and traces were kept from that read (the others are empty and are read when streamed).
#[derive(Debug)]
pub(super) struct Match {
    /// Meta, experiment and tags, with the kept attributes and traces.
    pub run: RunData,
    /// [`Reader::snapshot_generation`](super::read::Reader::snapshot_generation) of the read.
    pub generation: u64,
    /// Whether `run.attrs` holds the run's attributes.
    pub attrs: bool,
    /// Whether `run.traces` holds the run's traces.
    pub traces: bool,
}

/// The bytes a search may still keep.
#[derive(Debug)]
pub(super) struct Keeper {
    left: u64,
}

impl Keeper {
    /// A keeper of at most `budget` bytes.
    pub fn new(budget: u64) -> Self {
        Self { left: budget }
    }

    /// The match of `run`, read in `generation` with its attributes (`attrs`) and traces
    /// (`traces`) loaded: kept while they fit what is left of the budget, else dropped whole;
    /// then its contexts, kept while they fit what is left.
    pub fn keep(&mut self, mut run: RunData, generation: u64, attrs: bool, traces: bool) -> Match {
        let contexts = run.contexts.take();
        let mut kept = self.keep_read(run, generation, attrs, traces);
        if let Some(contexts) = contexts {
            let bytes = contexts_bytes(&contexts);
            if bytes <= self.left {
                self.left -= bytes;
                kept.run.contexts = Some(contexts);
            }
        }
        kept
    }

    fn keep_read(&mut self, mut run: RunData, generation: u64, attrs: bool, traces: bool) -> Match {
        let mut bytes = 0u64;
        if attrs {
            bytes = bytes.saturating_add(value_bytes(&run.attrs));
        }
        if traces {
            bytes = bytes.saturating_add(run.traces.iter().map(trace_bytes).fold(0, u64::saturating_add));
        }
        if (attrs || traces) && bytes <= self.left {
            self.left -= bytes;
            return Match { run, generation, attrs, traces };
        }
        run.attrs = Value::Nil;
        run.traces = Vec::new();
        Match { run, generation, attrs: false, traces: false }
    }
}

/// The memory a value holds: its own size and what it owns (an estimate: allocators round up).
fn value_bytes(v: &Value) -> u64 {
    let own = size_of::<Value>() as u64;
    let heap = match v {
        Value::Str(s) => s.len() as u64,
        Value::Bin(b) | Value::Ext(_, b) => b.len() as u64,
        Value::Array(items) => items.iter().map(value_bytes).fold(0, u64::saturating_add),
        Value::Map(entries) => {
            entries.iter().map(|(k, v)| value_bytes(k).saturating_add(value_bytes(v))).fold(0, u64::saturating_add)
        }
        Value::Nil | Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::DateTime(_) => 0,
    };
    own.saturating_add(heap)
}

/// The memory a run's contexts hold: each context and its id.
fn contexts_bytes(contexts: &Contexts) -> u64 {
    let id = size_of::<i128>() as u64;
    contexts.values().map(value_bytes).fold(0, |a, b| a.saturating_add(b).saturating_add(id))
}

fn trace_bytes(t: &Trace) -> u64 {
    let strings = (t.name.len() + t.dtype.len()) as u64;
    let values = [&t.last, &t.last_step, &t.context].into_iter().map(value_bytes).fold(0, u64::saturating_add);
    (size_of::<Trace>() as u64).saturating_add(strings).saturating_add(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::api::read::Meta;

    fn run(attrs: Value) -> RunData {
        RunData {
            hash: "r".into(),
            meta: Meta::default(),
            experiment: None,
            tags: Vec::new(),
            attrs,
            traces: Vec::new(),
            contexts: None,
        }
    }

    #[test]
    fn runs_are_kept_until_the_budget_is_spent_then_dropped_whole() {
        let attrs = Value::Map(vec![(Value::from("hparams"), Value::from("x".repeat(100)))]);
        let one = value_bytes(&attrs);
        let mut keeper = Keeper::new(2 * one);
        for _ in 0..2 {
            let m = keeper.keep(run(attrs.clone()), 7, true, false);
            assert!(m.attrs && !m.traces);
            assert_eq!((m.run.attrs.clone(), m.generation), (attrs.clone(), 7));
        }
        let m = keeper.keep(run(attrs.clone()), 7, true, true);
        assert!(!m.attrs && !m.traces);
        assert_eq!(m.run.attrs, Value::Nil);
    }

    #[test]
    fn contexts_are_kept_while_they_fit_what_is_left_even_when_nothing_else_was_loaded() {
        let contexts: Contexts =
            [(7, Value::Map(vec![(Value::from("subset"), Value::from("train"))]))].into_iter().collect();
        let with = |contexts: &Contexts| RunData { contexts: Some(contexts.clone()), ..run(Value::Nil) };
        let one = contexts_bytes(&contexts);
        let mut keeper = Keeper::new(one);
        let m = keeper.keep(with(&contexts), 0, false, false);
        assert_eq!(m.run.contexts.as_ref(), Some(&contexts));
        assert!(!m.attrs && !m.traces);
        let m = keeper.keep(with(&contexts), 0, false, false);
        assert_eq!(m.run.contexts, None, "the budget is spent: read again when streamed");
    }

    #[test]
    fn nothing_is_kept_of_what_was_not_loaded() {
        let m = Keeper::new(u64::MAX).keep(run(Value::Map(Vec::new())), 0, false, false);
        assert!(!m.attrs && !m.traces);
    }
}
