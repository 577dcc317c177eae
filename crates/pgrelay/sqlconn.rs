//! The binary → text value converter `tail --binary` uses, on an ordinary
//! connection from `pgrelay_source::connect_sql`. Conversion asks the server itself: a value
//! bound in binary as a parameter of its own type and formatted with
//! `format('%s', $1)` goes through the type's receive and output functions,
//! so every type, including enums, domains and composites, prints exactly
//! as pgoutput's text mode would send it (the output function, which is
//! not always what a `::text` cast gives: bool prints `t`).
//! PostgreSQL docs: "Extended Query" (protocol-flow), "Type Conversion".

use std::collections::HashMap;
use std::error::Error as StdError;

use bytes::{Bytes, BytesMut};
use pgrelay_types::Oid;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type};
use tokio_postgres::{Client, Statement};

/// A binary value passed through as is.
#[derive(Debug)]
struct Raw<'a>(&'a [u8]);

impl ToSql for Raw<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Turns binary column values into their text form, one prepared
/// statement per type.
pub struct TextConverter {
    client: Client,
    statements: HashMap<Oid, Statement>,
}

impl TextConverter {
    pub fn new(client: Client) -> Self {
        TextConverter {
            client,
            statements: HashMap::new(),
        }
    }

    pub async fn render(&mut self, type_oid: Oid, value: &Bytes) -> anyhow::Result<Bytes> {
        let stmt = match self.statements.get(&type_oid) {
            Some(s) => s.clone(),
            None => {
                let ty = Type::from_oid(type_oid.0).unwrap_or_else(|| {
                    Type::new(
                        format!("oid{}", type_oid.0),
                        type_oid.0,
                        Kind::Simple,
                        String::new(),
                    )
                });
                let s = self
                    .client
                    .prepare_typed("SELECT format('%s', $1)", &[ty])
                    .await?;
                self.statements.insert(type_oid, s.clone());
                s
            }
        };
        let row = self.client.query_one(&stmt, &[&Raw(value)]).await?;
        let text: String = row.get(0);
        Ok(Bytes::from(text))
    }
}
