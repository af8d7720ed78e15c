//! The benchmark's own database, created beside the one `DATABASE_URL` names and dropped
//! afterwards (unless `--keep`), so that the benchmark never touches a database it did not make.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

pub struct BenchDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl BenchDatabase {
    pub async fn create(admin_url: &str) -> anyhow::Result<BenchDatabase> {
        let name = format!("rebuild_bench_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("cannot connect to {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create database {name} beside {admin_url}"))?;
        admin.close().await?;
        let url = with_database(admin_url, &name)?;
        Ok(BenchDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    /// Drops the database; a failure is a warning, since the figures are already taken.
    pub async fn drop(&self) {
        let dropped = async {
            let mut admin = PgConnection::connect(&self.admin_url).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await
        }
        .await;
        if let Err(e) = dropped {
            eprintln!("warning: cannot drop database {}: {e}", self.name);
        }
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let Some(slash) = base
        .rfind('/')
        .filter(|i| base[..*i].ends_with(|c| c != '/'))
    else {
        bail!("DATABASE_URL {url:?} names no database");
    };
    let mut out = format!("{}/{database}", &base[..slash]);
    if let Some(query) = query {
        let _ = write!(out, "?{query}");
    }
    Ok(out)
}
