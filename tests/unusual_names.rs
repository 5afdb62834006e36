//! Names, tags and property keys/values that break naive URL building, JSON-pointer escaping or
//! string handling (non-ASCII, `/`, `~`, spaces, `%`, `?`, `#`, Glance's 255-character limits)
//! survive replication exactly, do not cause phantom drift, and are patched exactly when they
//! change. Against real Glance 33 on loopback (tests/harness).

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::RealGlance;
use support::scenario::{copies_by_source, replicable};
use support::sync_cli::{glance_sync, plan_json, write_config};

/// The property whose key needs both JSON-pointer escapes; its pointer is `/os~1distro~0x`.
const SLASH_TILDE_KEY: &str = "os/distro~x";

/// `unit` repeated to exactly `len` characters (not bytes), ending in `last`.
fn chars(unit: &str, len: usize, last: char) -> String {
    let mut s: String = unit.chars().cycle().take(len - 1).collect();
    s.push(last);
    assert_eq!(s.chars().count(), len);
    s
}

/// Source image id → its copy on the target (exactly one each).
async fn copies(target: &Api, ids: &[String]) -> Vec<Value> {
    let by_source = copies_by_source(target).await;
    ids.iter()
        .map(|id| {
            let list = by_source
                .get(id)
                .unwrap_or_else(|| panic!("no copy of {id} on the target"));
            assert_eq!(list.len(), 1, "{id} copied {} times", list.len());
            list[0].clone()
        })
        .collect()
}

async fn assert_same_metadata(source: &Api, target: &Api, ids: &[String]) -> Vec<Value> {
    let copies = copies(target, ids).await;
    for (id, copy) in ids.iter().zip(&copies) {
        let src = source.get(id).await;
        assert_eq!(copy["status"], "active", "{id}");
        assert_eq!(copy["name"], src["name"], "name of {id}");
        assert_eq!(copy["checksum"], src["checksum"], "checksum of {id}");
        assert_eq!(
            replicable(copy),
            replicable(&src),
            "metadata of {id} (name, tags as a set, properties)"
        );
    }
    copies
}

#[tokio::test]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn unusual_names_tags_and_property_keys_are_replicated_and_patched_exactly() {
    let src = RealGlance::start("names-src");
    let dst = RealGlance::start("names-dst");
    let (source, target) = (Api::new(&src.url), Api::new(&dst.url));

    let long_name = chars("名前/~ %?#x", 255, 'Z');
    let long_tag = chars("タグ/~%?# t", 255, 'T');
    let long_key = chars("key/~%?#", 255, 'K');
    let images = [
        (
            "Débian 12 / ~stable~ 100% ready? #1 — 日本語",
            json!({
                "tags": ["golden/stable", "ブルー ~ tag", "50% off?", "#hash tag", "a~b/c~1d~0e"],
                SLASH_TILDE_KEY: "ü/~ value ?#%",
                "key with spaces": "value with spaces",
                "ключ": "значение ✓",
                "percent%2Fkey": "%2F stays %2F, %zz too",
                "query?key#frag": "v?x=1&y=2#z",
                "x~1y": "literal ~1 and ~0",
                "multi": "line one\nline two\ttab",
            }),
        ),
        (
            long_name.as_str(),
            json!({"tags": [long_tag.as_str(), "short"], long_key.as_str(): "long key's value"}),
        ),
        (
            "?a=1&b=%2F#frag / ~",
            json!({"tags": ["/", "~", "%", "?", "#", " "]}),
        ),
    ];
    let mut ids = Vec::new();
    for (seed, (name, extra)) in images.iter().enumerate() {
        let img = source
            .create_with_data(
                image_body(name, "raw", extra.clone()),
                random_bytes(64 * 1024, 100 + seed as u64),
            )
            .await;
        assert_eq!(img["name"], *name, "Glance kept the name as sent");
        for (k, v) in extra.as_object().unwrap() {
            if k == "tags" {
                let want: BTreeSet<&str> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap())
                    .collect();
                let got: BTreeSet<&str> = img["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap())
                    .collect();
                assert_eq!(got, want, "Glance kept the tags as sent");
            } else {
                assert_eq!(&img[k], v, "Glance kept property {k:?} as sent");
            }
        }
        ids.push(img["id"].as_str().unwrap().to_string());
    }

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[("prod", &src.url), ("dr", &dst.url)],
        "prod",
        &["dr"],
        "",
    );

    // The plan names every image exactly.
    let plan = plan_json(&cfg).await;
    let planned: BTreeSet<&str> = plan[0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    let names: BTreeSet<&str> = images.iter().map(|(n, _)| *n).collect();
    assert_eq!(planned, names);

    let first = glance_sync(&cfg, &["run"]).await;
    first.assert_code(0);
    assert!(first.stdout.contains("(3 copied"), "{}", first.stdout);
    let before = assert_same_metadata(&source, &target, &ids).await;

    // Nothing looks drifted afterwards: no copy, no patch, no write at all.
    let dst_writes = dst.write_requests().len();
    let second = glance_sync(&cfg, &["run"]).await;
    second.assert_code(0);
    assert!(
        second.stdout.contains("(0 copied") && second.stdout.contains("; 0 updated;"),
        "{}",
        second.stdout
    );
    assert_eq!(
        dst.write_requests()[dst_writes..].to_vec(),
        Vec::<String>::new(),
        "the second run wrote to the target"
    );

    // Change the property whose key holds `/` and `~` on the source (the test's own escaping).
    let new_value = "changed ✓ / ~0 ~1 %2F ?#";
    source
        .patch(
            &ids[0],
            json!([{"op": "replace", "path": "/os~1distro~0x", "value": new_value}]),
        )
        .await;
    assert_eq!(source.get(&ids[0]).await[SLASH_TILDE_KEY], new_value);

    let dst_writes = dst.write_requests().len();
    let third = glance_sync(&cfg, &["run"]).await;
    third.assert_code(0);
    assert!(
        third.stdout.contains("(0 copied") && third.stdout.contains("; 1 updated;"),
        "{}",
        third.stdout
    );
    let copy_id = before[0]["id"].as_str().unwrap();
    assert_eq!(
        dst.write_requests()[dst_writes..].to_vec(),
        vec![format!("PATCH /v2/images/{copy_id} (200)")],
        "exactly one patch of the changed copy"
    );
    let after = assert_same_metadata(&source, &target, &ids).await;

    // Exactly that change: same copy, one property value different, nothing else.
    assert_eq!(after[0]["id"], before[0]["id"], "patched in place");
    let mut expected = replicable(&before[0]);
    expected.insert(SLASH_TILDE_KEY.into(), Value::from(new_value));
    assert_eq!(replicable(&after[0]), expected);
    for (b, a) in before.iter().zip(&after).skip(1) {
        assert_eq!(replicable(a), replicable(b), "an unchanged copy changed");
    }
    for stray in ["os", "distro~x", "os~1distro~0x", "os/distro~0x"] {
        assert!(after[0].get(stray).is_none(), "stray property {stray:?}");
    }
}
