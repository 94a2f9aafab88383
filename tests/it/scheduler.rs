//! The scheduler in front of the real default model: priority order,
//! admission, deadlines, abandoned requests, shutdown.

use hearth::engine::{
    ChatMessage, Engine, EngineError, EngineOptions, Event, FinishReason, GenerateRequest, Role,
    SamplingParams,
};
use hearth::scheduler::{Priority, Scheduler, SchedulerError, SchedulerOptions};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn scheduler(capacity: usize) -> Scheduler {
    let engine = Engine::load(&hearth_tests::default_model(), &EngineOptions::default()).unwrap();
    Scheduler::new(
        engine,
        SchedulerOptions {
            capacity,
            ..Default::default()
        },
    )
}

fn request(text: &str, tokens: usize) -> GenerateRequest {
    let mut r = GenerateRequest::chat(vec![ChatMessage::new(Role::User, text)]);
    r.params = SamplingParams::greedy(tokens);
    r
}

/// Keeps the engine busy with a long generation; returns its handle.
fn occupy(s: &Scheduler) -> hearth::engine::Generation {
    let mut busy = s
        .submit(
            request("Tell me a very long story about the sea.", 120),
            Priority::Interactive,
            None,
        )
        .unwrap();
    // Wait until it is generating, so later submissions queue behind it.
    match busy.blocking_next() {
        Some(Ok(Event::Text(_))) => {}
        other => panic!("{other:?}"),
    }
    busy
}

#[test]
fn classes_run_in_priority_order_first_come_first_served_within_one() {
    let _memory = crate::MEMORY.blocking_read();
    let s = scheduler(16);
    let busy = occupy(&s);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for (name, priority) in [
        ("background-1", Priority::Background),
        ("plugin-1", Priority::Plugin),
        ("interactive-1", Priority::Interactive),
        ("background-2", Priority::Background),
        ("interactive-2", Priority::Interactive),
    ] {
        let generation = s.submit(request("Say yes.", 2), priority, None).unwrap();
        let order = order.clone();
        waiters.push(std::thread::spawn(move || {
            generation.wait(&mut |_| {}).unwrap();
            order.lock().unwrap().push(name);
        }));
    }
    assert_eq!(s.stats().queued, [2, 1, 2]);
    drop(busy); // the long one is cancelled; the queue drains
    for w in waiters {
        w.join().unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        [
            "interactive-1",
            "interactive-2",
            "plugin-1",
            "background-1",
            "background-2"
        ]
    );
    let stats = s.stats();
    assert_eq!(stats.queued, [0, 0, 0]);
    assert_eq!(stats.completed, 6);
}

#[test]
fn a_full_queue_refuses_at_once_with_a_retry_time() {
    let _memory = crate::MEMORY.blocking_read();
    let s = scheduler(2);
    let _busy = occupy(&s);
    let _a = s
        .submit(request("a", 2), Priority::Background, None)
        .unwrap();
    let _b = s
        .submit(request("b", 2), Priority::Background, None)
        .unwrap();
    match s.submit(request("c", 2), Priority::Interactive, None) {
        Err(SchedulerError::QueueFull {
            capacity,
            retry_after,
        }) => {
            assert_eq!(capacity, 2);
            assert!(retry_after >= Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }
    // The refusal did not wait for room: when it came back nothing had
    // left the queue and the long generation (120 tokens, seconds) was
    // still running. Read after the refusal, so a wait would show as a
    // completed request. (An ordering rather than a stopwatch, which
    // flaked on a busy two-core machine.)
    let stats = s.stats();
    assert_eq!(
        (
            stats.in_flight,
            stats.queued.iter().sum::<usize>(),
            stats.completed
        ),
        (1, 2, 0),
        "refusal must not wait: {stats:?}"
    );
    assert_eq!(s.stats().rejected_full, 1);
    // Bad requests are refused before they take a place in the queue.
    let mut bad = request("x", 2);
    bad.params.temperature = 9.0;
    assert!(matches!(
        s.submit(bad, Priority::Interactive, None),
        Err(SchedulerError::Invalid(EngineError::InvalidParameter {
            name: "temperature",
            ..
        }))
    ));
}

#[test]
fn deadlines_expire_queued_work_and_stop_running_work() {
    let _memory = crate::MEMORY.blocking_read();
    let s = scheduler(8);
    let busy = occupy(&s);
    let late = s
        .submit(
            request("a", 2),
            Priority::Interactive,
            Some(Instant::now() + Duration::from_millis(20)),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(busy);
    let err = late.wait(&mut |_| {}).unwrap_err();
    assert!(matches!(err, EngineError::QueueDeadline { .. }), "{err}");
    assert_eq!(s.stats().expired, 1);

    // A deadline during generation stops it between tokens.
    let running = s
        .submit(
            request("Tell me a very long story.", 400),
            Priority::Interactive,
            Some(Instant::now() + Duration::from_millis(150)),
        )
        .unwrap();
    let done = running.wait(&mut |_| {}).unwrap();
    assert_eq!(done.finish_reason, FinishReason::Cancelled);
    assert!(done.usage.completion_tokens < 400);
}

#[test]
fn abandoned_requests_never_run_and_shutdown_answers_the_rest() {
    let _memory = crate::MEMORY.blocking_read();
    let s = scheduler(8);
    let busy = occupy(&s);
    let gone = s
        .submit(request("a", 2), Priority::Interactive, None)
        .unwrap();
    drop(gone); // the client disconnected while queued
    let waiting = s
        .submit(request("b", 2), Priority::Background, None)
        .unwrap();
    s.shutdown();
    let err = waiting.wait(&mut |_| {}).unwrap_err();
    assert!(matches!(err, EngineError::ShuttingDown), "{err}");
    let done = busy.wait(&mut |_| {}).unwrap();
    assert_eq!(done.finish_reason, FinishReason::Cancelled);
    assert!(matches!(
        s.submit(request("c", 2), Priority::Interactive, None),
        Err(SchedulerError::ShuttingDown)
    ));
    let stats = s.stats();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.queued, [0, 0, 0]);
}

#[test]
fn up_to_the_engines_parallel_sequences_run_at_once_the_rest_wait() {
    let _memory = crate::MEMORY.blocking_read();
    let engine = Engine::load(
        &hearth_tests::default_model(),
        &EngineOptions {
            parallel: Some(2),
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let s = Scheduler::new(engine, SchedulerOptions::default());
    assert_eq!(s.parallel(), 2);
    let mut a = occupy(&s);
    let mut b = occupy(&s);
    let waiting = s
        .submit(request("Say yes.", 2), Priority::Interactive, None)
        .unwrap();
    let stats = s.stats();
    assert_eq!(stats.in_flight, 2);
    assert_eq!(stats.queued, [1, 0, 0]);
    // Both keep streaming side by side.
    for g in [&mut a, &mut b] {
        assert!(matches!(g.blocking_next(), Some(Ok(Event::Text(_)))));
    }
    drop(a); // a free sequence: the waiting request runs
    let done = waiting.wait(&mut |_| {}).unwrap();
    assert_eq!(done.finish_reason, FinishReason::Length);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.stats().in_flight > 0 {
        assert!(Instant::now() < deadline, "{:?}", s.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.stats().completed, 3);
}
