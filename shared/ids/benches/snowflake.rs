//! How many ids per second one generator makes. The ceiling is 4,096,000/s per node (4,096
//! sequence numbers per millisecond); a generator that reaches it is limited by the id format,
//! not by its own cost.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ids::Snowflake;
use std::hint::black_box;

fn single_thread(c: &mut Criterion) {
    let gen = Snowflake::new(1).unwrap();
    let mut group = c.benchmark_group("snowflake");
    group.throughput(Throughput::Elements(1));
    group.bench_function("next_id/1-thread", |b| {
        b.iter(|| black_box(gen.next_id().unwrap()))
    });
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    const PER_ITER: u64 = 10_000;
    let gen = Snowflake::new(2).unwrap();
    let mut group = c.benchmark_group("snowflake");
    group.throughput(Throughput::Elements(2 * PER_ITER));
    group.bench_function("next_id/2-threads-x10000", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..PER_ITER {
                            black_box(gen.next_id().unwrap());
                        }
                    });
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, single_thread, two_threads);
criterion_main!(benches);
