//! A fourth adapter, written here through the public API alone, proves that adding one
//! needs no change under `src/`: a HubSpot-style companies upsert, registered next to the
//! built-in adapters and run by the real daemon in this process (ingest over real HTTP, the
//! spool on disk, the engine's batching and classification) against a capture server.

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use common::{Answer, Receiver};
use http::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard::config::{self, ConfigError};
use switchyard::destination::{Destination, Item, OutRequest, Registry, Setup, Translation};
use switchyard::message::MessageType;
use switchyard::server::{self, Plan};

/// The adapter's own keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompaniesConfig {
    api_host: String,
}

struct Companies {
    url: String,
}

fn build(setup: Setup<'_>) -> Result<Arc<dyn Destination>, ConfigError> {
    let c: CompaniesConfig = setup.settings.parse()?;
    let host = setup.settings.http_url("api_host", &c.api_host)?;
    Ok(Arc::new(Companies {
        url: format!("{host}/crm/v3/objects/companies/batch/upsert"),
    }))
}

impl Destination for Companies {
    fn max_batch(&self) -> usize {
        100
    }

    fn default_batch(&self) -> usize {
        100
    }

    fn accepts(&self) -> &'static [MessageType] {
        &[MessageType::Group]
    }

    fn translate(&self, batch: &[Item<'_>], _now: SystemTime) -> Translation {
        let inputs: Vec<Value> = batch
            .iter()
            .map(|item| {
                let traits = &item.message["traits"];
                json!({"idProperty": "segment_group_id", "id": item.group_call(),
                       "properties": {"name": traits["name"], "numberofemployees": traits["employees"]}})
            })
            .collect();
        let body = serde_json::to_vec(&json!({ "inputs": inputs })).unwrap();
        let items = (0..batch.len()).collect();
        Translation {
            requests: vec![OutRequest::json(Method::POST, &self.url, body, items)],
            ..Translation::default()
        }
    }
}

fn registry() -> Registry {
    Registry::builtin().with("companies", build)
}

const PATH: &str = "/crm/v3/objects/companies/batch/upsert";

#[tokio::test]
async fn an_adapter_added_from_outside_delivers_through_the_daemon() {
    let rx = Receiver::start().await;
    rx.set_default(PATH, Answer::json(200, json!({"status": "COMPLETE"})));
    let spool = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[source]]\nname = \"web\"\nwrite_key = \"k\"\n[spool]\npath = \"{}\"\n[[destination]]\nname = \"Companies\"\ntype = \"companies\"\napi_host = \"{}\"\nbatch = {{ max_wait = \"10ms\" }}\n",
        spool.path().display(),
        rx.url("")
    );
    let plan = Plan::with_registry(config::load(&text).unwrap(), &registry()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(server::run(plan, listener, async {
        let _ = stopped.await;
    }));

    let calls = json!({"batch": [
        {"type": "group", "groupId": "acme", "userId": "u1", "traits": {"Name": "Acme", "employees": "42"}},
        {"type": "track", "event": "Signed Up", "userId": "u1"},
        {"type": "group", "groupId": "umbrella", "userId": "u2", "traits": {"name": "Umbrella"}}
    ]});
    let answer = reqwest::Client::new()
        .post(format!("http://{addr}/v1/batch"))
        .basic_auth("k", Some(""))
        .json(&calls)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    // The engine normalized the traits and routed only the group calls here.
    let got = rx
        .wait_until(
            PATH,
            |got| {
                got.iter()
                    .map(|c| c.json()["inputs"].as_array().unwrap().len())
                    .sum::<usize>()
                    >= 2
            },
            "both companies",
        )
        .await;
    let inputs: Vec<Value> = got
        .iter()
        .flat_map(|c| c.json()["inputs"].as_array().unwrap().clone())
        .collect();
    assert_eq!(
        inputs,
        vec![
            json!({"idProperty": "segment_group_id", "id": "acme", "properties": {"name": "Acme", "numberofemployees": 42}}),
            json!({"idProperty": "segment_group_id", "id": "umbrella", "properties": {"name": "Umbrella", "numberofemployees": null}}),
        ]
    );
    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();
}

#[test]
fn its_config_is_checked_like_a_built_in_one() {
    let load = |own: &str| {
        let text = format!(
            "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"Companies\"\ntype = \"companies\"\n{own}\n"
        );
        let errors = Plan::with_registry(config::load(&text).unwrap(), &registry())
            .err()
            .unwrap();
        errors.to_string()
    };
    assert_eq!(
        load("api_host = \"ftp://x\""),
        "line 6, column 1: destination `Companies`: api_host must be http or https"
    );
    assert!(
        load("api_host = \"http://x\"\ntypes = [\"track\"]").contains("takes group calls only")
    );
    // Without the registration the type is unknown, and the error lists what is known.
    let text = "[server]\nallow_unauthenticated = true\n[[destination]]\nname = \"C\"\ntype = \"companies\"\napi_host = \"http://x\"\n";
    let unknown = Plan::new(config::load(text).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        unknown.contains("unknown type `companies` (known: webhook, mixpanel, salesforce)"),
        "{unknown}"
    );
}
