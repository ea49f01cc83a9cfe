//! The built-in adapters as the fuzz targets drive them: one config, built once.

use std::sync::{Arc, OnceLock};

use switchyard::destination::Destination;
use switchyard::route::RouteKey;

const CONFIG: &str = r#"
[server]
allow_unauthenticated = true
[[destination]]
name = "Mixpanel"
type = "mixpanel"
project_token = "t"
group_key = "company_id"
api_host = "http://127.0.0.1:9"
[[destination]]
name = "Salesforce"
type = "salesforce"
instance_url = "http://127.0.0.1:9"
external_id_field = "Ext__c"
fields = { plan = "Plan__c", seats = "Seats__c" }
auth = { flow = "client_credentials", client_id = "c", client_secret = "s" }
[[destination]]
name = "Webhook"
type = "webhook"
url = "http://127.0.0.1:9/hook"
batch = { max_events = 50 }
"#;

/// Each adapter with its routing keys.
pub fn adapters() -> &'static Vec<(Arc<dyn Destination>, RouteKey)> {
    static ADAPTERS: OnceLock<Vec<(Arc<dyn Destination>, RouteKey)>> = OnceLock::new();
    ADAPTERS.get_or_init(|| {
        let config = switchyard::config::load(CONFIG).expect("the fuzz config loads");
        config
            .destinations
            .iter()
            .map(|d| {
                let adapter = switchyard::destination::build(d).expect("builds");
                let route = RouteKey::new(&d.name, &d.aliases, adapter.accepts().to_vec());
                (adapter, route)
            })
            .collect()
    })
}
