//! A real PostgreSQL server for the integration tests: `Postgres::start()`, `.url()`,
//! `.fresh_database(name)`, stopped and removed on drop. The server is the one the library's
//! unit tests use (one file, included here), so both start it the same way.

#[path = "../../src/state/postgres/test_server.rs"]
mod server;

// Most test binaries include the harness without starting a PostgreSQL server.
#[allow(unused_imports)]
pub use server::Postgres;
