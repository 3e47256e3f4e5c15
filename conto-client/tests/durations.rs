//! No client timeout panics, whatever it is given (time is paused).

use std::time::Duration;

use conto_client::ContoClient;
use conto_core::{PaymentIntent, Rail};
use proptest::prelude::*;

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..5_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_secs),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn client_timeouts_never_panic(authorize in any_duration(), record in any_duration()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async {
            let client = ContoClient::builder()
                .base_url("http://127.0.0.1:9")
                .sdk_key("conto_agent_0000")
                .authorize_timeout(authorize)
                .record_timeout(record)
                .max_retries(1)
                .any_actor().build()
                .unwrap();
            let intent = PaymentIntent::builder("agent-1", "1", Rail::x402("https://api.example.com/q").unwrap())
                .recipient("0x1111111111111111111111111111111111111111")
                .build()
                .unwrap();
            let _ = client.authorize_intent(&intent).await;
        });
    }
}
