//! `tracely apikey`: create, list and revoke API keys directly in the database, which is how
//! the first admin key comes to exist.

use anyhow::Context as _;
use sqlx::PgPool;

use crate::config::ApikeyCommand;

pub async fn run(command: ApikeyCommand) -> anyhow::Result<()> {
    match command {
        ApikeyCommand::Create {
            role,
            name,
            database,
        } => {
            let pool = connect(&database.database_url).await?;
            let created = api::auth::create_key(&pool, &name, role)
                .await
                .context("storing the key")?;
            eprintln!(
                "created {} key {:?} ({}); it is shown only now:",
                created.record.role, created.record.name, created.record.id
            );
            println!("{}", created.key);
        }
        ApikeyCommand::List { database } => {
            let pool = connect(&database.database_url).await?;
            let (keys, _) = store::api_keys::list(
                &pool,
                store::Sort {
                    field: store::api_keys::SORT_FIELDS[0],
                    descending: false,
                },
                store::Page::all(),
            )
            .await
            .context("listing keys")?;
            println!(
                "{:<36}  {:<8}  {:<12}  {:<20}  name",
                "id", "role", "prefix", "state"
            );
            for key in keys {
                let state = match key.revoked_at {
                    Some(at) => format!("revoked {}", at.format("%Y-%m-%d")),
                    None => "active".to_owned(),
                };
                println!(
                    "{:<36}  {:<8}  {:<12}  {:<20}  {}",
                    key.id, key.role, key.prefix, state, key.name
                );
            }
        }
        ApikeyCommand::Revoke { id, database } => {
            let pool = connect(&database.database_url).await?;
            match store::api_keys::revoke(&pool, id).await? {
                Some(key) => eprintln!("revoked key {:?} ({id})", key.name),
                None => anyhow::bail!("no key with id {id}"),
            }
        }
    }
    Ok(())
}

/// Connects and migrates, so keys can be made before the first `tracely run`.
async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    crate::startup::migrate_only(database_url).await?;
    let pool = store::connect_lazy(database_url, 2).context("invalid DATABASE_URL")?;
    store::ping(&pool)
        .await
        .context("connecting to Postgres (set DATABASE_URL or --database-url)")?;
    Ok(pool)
}
