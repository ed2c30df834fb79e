use heim_shared_types::{DeviceId, GatewayTime, Measurement, Quantity, Reading, Unit};
use proptest::prelude::*;

use super::*;

fn reading(n: u64) -> Reading {
    Reading {
        id: crate::reading_id::derive("test", &[&n.to_be_bytes()]),
        device: DeviceId::Simulated {
            source: 0,
            device: (n % 3) as u16,
        },
        device_time: None,
        device_time_trusted: false,
        received: GatewayTime {
            unix_millis: n as i64,
            synchronized: true,
        },
        measurement: Measurement::PulseRate(Quantity::new(n as i32, 0, Unit::PerMinute)),
    }
}

fn open(dir: &tempfile::TempDir, max_bytes: u64) -> Outbox {
    Outbox::open(Options {
        path: dir.path().join("o.db"),
        max_bytes,
        write_batch: 100,
    })
    .unwrap()
    .0
}

fn ids(rows: &[Row]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

#[tokio::test]
async fn append_fetch_ack_and_cursor_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ob = open(&dir, 1 << 30);
        ob.append(Append::readings(
            (1..=10).map(reading).collect(),
            Some(("sim".into(), 10u64.to_be_bytes().to_vec())),
        ))
        .await
        .unwrap();
        let rows = ob.fetch([0, 0], 4).await.unwrap();
        assert_eq!(rows.len(), 4);
        ob.ack(ids(&rows)).await.unwrap();
        ob.flush().await.unwrap();
        assert_eq!(ob.stats().borrow().pending, 6);
    }
    let ob = open(&dir, 1 << 30);
    assert_eq!(ob.stats().borrow().pending, 6);
    assert_eq!(
        ob.cursor("sim").await.unwrap(),
        Some(10u64.to_be_bytes().to_vec())
    );
    let rows = ob.fetch([0, 0], 100).await.unwrap();
    let got: Vec<Reading> = rows
        .iter()
        .map(|r| match &r.body {
            Body::Reading(x) => *x,
            Body::Event { .. } => panic!("no events"),
        })
        .collect();
    assert_eq!(got, (5..=10).map(reading).collect::<Vec<_>>());
}

#[tokio::test]
async fn priority_lane_first_and_events_kept() {
    let dir = tempfile::tempdir().unwrap();
    let ob = open(&dir, 1 << 30);
    ob.append(Append::readings((1..=5).map(reading).collect(), None))
        .await
        .unwrap();
    ob.append(Append {
        readings: vec![(reading(99), Lane::Priority)],
        events: vec![Event {
            topic: "events".into(),
            payload: b"{\"alert\":1}".to_vec(),
            lane: Lane::Priority,
        }],
        cursors: vec![],
    })
    .await
    .unwrap();
    let rows = ob.fetch([0, 0], 3).await.unwrap();
    assert_eq!(rows[0].lane, Lane::Priority);
    assert_eq!(rows[0].body, Body::Reading(reading(99)));
    assert_eq!(
        rows[1].body,
        Body::Event {
            topic: "events".into(),
            payload: b"{\"alert\":1}".to_vec()
        }
    );
    assert_eq!(rows[2].body, Body::Reading(reading(1)));
    // Ids never repeat, even once the table has been emptied.
    let all = ob.fetch([0, 0], 100).await.unwrap();
    let max = *ids(&all).iter().max().unwrap();
    ob.ack(ids(&all)).await.unwrap();
    ob.flush().await.unwrap();
    ob.append(Append::readings(vec![reading(7)], None))
        .await
        .unwrap();
    let again = ob.fetch([0, 0], 10).await.unwrap();
    assert!(again[0].id > max);
}

#[tokio::test]
async fn size_limit_holds_sources_back_until_drained() {
    let dir = tempfile::tempdir().unwrap();
    let ob = open(&dir, 1024 * 1024);
    // Fill past the limit.
    let mut n = 0u64;
    while !ob.stats().borrow().full {
        let batch: Vec<_> = (n + 1..=n + 100).map(reading).collect();
        n += 100;
        ob.append(Append::readings(batch, None)).await.unwrap();
        assert!(n < 1_000_000, "the limit never triggered");
    }
    assert!(ob.stats().borrow().near_full);
    let stored = ob.fetch([0, 0], 1_000_000).await.unwrap();
    // The next append waits instead of failing or dropping.
    let ob2 = ob.clone();
    let waiting = tokio::spawn(async move {
        ob2.append(Append::readings(vec![reading(u64::MAX)], None))
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "append must wait while full");
    // Drain: ack everything stored before the wait.
    ob.ack(ids(&stored)).await.unwrap();
    ob.flush().await.unwrap();
    waiting.await.unwrap().unwrap();
    assert!(!ob.stats().borrow().full);
    let rest = ob.fetch([0, 0], 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].body, Body::Reading(reading(u64::MAX)));
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Fetch(u8),
    AckOldest(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..20).prop_map(Op::Append),
        (1u8..20).prop_map(Op::Fetch),
        (1u8..20).prop_map(Op::AckOldest),
        Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// The outbox behaves like a FIFO queue: what was appended and not acked comes back, in order,
    /// across reopenings.
    #[test]
    fn model_fifo(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut ob = open(&dir, 1 << 30);
            let mut model: std::collections::VecDeque<(i64, Reading)> = Default::default();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Append(k) => {
                        let batch: Vec<_> = (0..k).map(|_| { next += 1; reading(next) }).collect();
                        ob.append(Append::readings(batch.clone(), None)).await.unwrap();
                        let all = ob.fetch([0, 0], 100_000).await.unwrap();
                        let tail = &all[all.len() - batch.len()..];
                        for (row, r) in tail.iter().zip(batch) {
                            model.push_back((row.id, r));
                        }
                    }
                    Op::Fetch(k) => {
                        let rows = ob.fetch([0, 0], k as usize).await.unwrap();
                        let want: Vec<_> = model.iter().take(k as usize).map(|(i, r)| (*i, Body::Reading(*r))).collect();
                        let got: Vec<_> = rows.into_iter().map(|r| (r.id, r.body)).collect();
                        assert_eq!(got, want);
                    }
                    Op::AckOldest(k) => {
                        let ids: Vec<i64> = model.iter().take(k as usize).map(|(i, _)| *i).collect();
                        for _ in 0..ids.len() { model.pop_front(); }
                        ob.ack(ids).await.unwrap();
                    }
                    Op::Reopen => {
                        ob.flush().await.unwrap();
                        drop(ob);
                        // The writer thread exits when the last handle drops; reopen the file.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        ob = open(&dir, 1 << 30);
                    }
                }
                ob.flush().await.unwrap();
                assert_eq!(ob.stats().borrow().pending, model.len() as u64);
            }
        });
    }
}
