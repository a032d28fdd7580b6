//! The planner of spec §5.4 (placeholder).
