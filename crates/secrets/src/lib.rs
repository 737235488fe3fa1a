//! Managed database credentials (issue 16): the roles pgdr rotates, the
//! secret store of each region, and the rotation itself.
//!
//! - [`value`]: the stored secret (the JSON applications already read for
//!   RDS secrets, plus pgdr's `version` and `epoch`);
//! - [`store`]: the [`store::SecretStore`] trait and its kinds, `file`
//!   ([`file`]) and `aws-secretsmanager` ([`aws`]); a Vault KV v2 store
//!   would be one more implementation behind the same trait;
//! - [`password`]: new passwords from the OS CSPRNG and the SCRAM-SHA-256
//!   verifier pgdr sends instead of the password, so the plain text never
//!   reaches the server or its log;
//! - [`rotate`]: one rotation: change the password on the current primary
//!   with the epoch checked, wait until every standby of the replica set
//!   has replayed it, write every region's store, log in through each
//!   region's proxy.
//!
//! Depends on the config, the node layer (connections) and the proxy's
//! SCRAM code; never on the controller.

pub mod aws;
pub mod file;
pub mod password;
pub mod rotate;
pub mod store;
pub mod value;

pub use store::{SecretStore, StoreError, open_store};
pub use value::{SecretKey, SecretValue};
