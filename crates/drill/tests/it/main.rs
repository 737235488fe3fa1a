//! The drill's own parts against real PostgreSQL: the workload, the checker
//! (made to miss a commit on purpose), and the report's self-containment.

mod checker;
mod report;
mod writable;
