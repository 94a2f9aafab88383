//! The loop's decisions that need no model: what each step is constrained
//! to, and how an output is read into answer text and calls.

use super::*;

fn tool(name: &str) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: String::new(),
        parameters: json!({"type": "object", "properties": {}}),
    }
}

/// The names a forced step's schema allows.
fn allowed(step: &Step) -> Vec<String> {
    let Some(OutputFormat::JsonSchema(schema)) = &step.format else {
        return Vec::new();
    };
    let one = |s: &Value| {
        s.pointer("/properties/name/const")
            .and_then(Value::as_str)
            .map(String::from)
    };
    match schema.get("anyOf").and_then(Value::as_array) {
        Some(list) => list.iter().filter_map(one).collect(),
        None => one(schema).into_iter().collect(),
    }
}

#[test]
fn json_mode_never_turns_the_answer_into_a_tool_call() {
    // `response_format: json_object`, no client tools, plugin tools active:
    // the model's JSON is the answer even when it has a "name".
    let plugins = [tool("calc.eval")];
    let step = Step::plan(
        0,
        &ToolChoice::Auto,
        &[],
        &plugins,
        Some(&OutputFormat::JsonObject),
    );
    assert!(!step.forced);
    assert_eq!(step.format, Some(OutputFormat::JsonObject));
    let text = r#"{"name": "Ada", "arguments": {}}"#;
    let read = step.read(text, &[], &plugins);
    assert_eq!(read.content, text);
    assert!(read.client.is_empty() && read.host.is_empty() && read.unknown.is_empty());
}

#[test]
fn required_with_client_tools_forces_a_client_tool_call() {
    // The plugins' tools must not be in the required set: a call to one
    // would run here and the next step answer in plain text.
    let client = [tool("get_time")];
    let plugins = [tool("calc.eval"), tool("notes.save")];
    let step = Step::plan(0, &ToolChoice::Required, &client, &plugins, None);
    assert!(step.forced);
    assert_eq!(allowed(&step), ["get_time"]);
    let read = step.read(
        r#"{"name": "get_time", "arguments": {}}"#,
        &client,
        &plugins,
    );
    assert_eq!(read.client.len(), 1);
    assert!(read.host.is_empty());
}

#[test]
fn required_without_client_tools_forces_a_plugin_call_then_answers_freely() {
    let plugins = [tool("calc.eval"), tool("notes.save")];
    let first = Step::plan(0, &ToolChoice::Required, &[], &plugins, None);
    assert!(first.forced);
    assert_eq!(allowed(&first), ["calc.eval", "notes.save"]);
    let second = Step::plan(1, &ToolChoice::Required, &[], &plugins, None);
    assert!(!second.forced);
    assert_eq!(second.format, None);
    assert!(second.calls_allowed);
}

#[test]
fn a_named_function_forces_exactly_that_tool() {
    let client = [tool("get_time"), tool("get_weather")];
    let plugins = [tool("calc.eval")];
    for name in ["get_weather", "calc.eval"] {
        let step = Step::plan(
            0,
            &ToolChoice::Function(name.into()),
            &client,
            &plugins,
            None,
        );
        assert_eq!(allowed(&step), [name]);
    }
}

#[test]
fn calls_are_sorted_by_who_offered_the_tool_and_unknown_ones_never_count() {
    let client = [tool("get_time")];
    let plugins = [tool("calc.eval")];
    let step = Step::plan(0, &ToolChoice::Auto, &client, &plugins, None);
    let call = |name: &str| {
        format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {{}}}}\n</tool_call>")
    };
    let cases: &[(&[&str], usize, usize, usize)] = &[
        // called, client, plugin, unknown
        (&["get_time"], 1, 0, 0),
        (&["calc.eval"], 0, 1, 0),
        (&["calc.eval", "made_up"], 0, 1, 1),
        (&["get_time", "made_up"], 1, 0, 1),
        // Only unknown names: that was the answer, not calls.
        (&["made_up"], 0, 0, 0),
    ];
    for (called, c, p, u) in cases {
        let text: Vec<String> = called.iter().map(|n| call(n)).collect();
        let text = text.join("\n");
        let read = step.read(&text, &client, &plugins);
        assert_eq!(
            (read.client.len(), read.host.len(), read.unknown.len()),
            (*c, *p, *u),
            "{called:?}"
        );
        if *c + *p == 0 {
            assert_eq!(read.content, text);
        }
    }
}

#[test]
fn without_tools_nothing_is_read_as_a_call() {
    let step = Step::plan(0, &ToolChoice::Auto, &[], &[], None);
    assert!(!step.calls_allowed);
    let text = "<tool_call>\n{\"name\": \"calc.eval\", \"arguments\": {}}\n</tool_call>";
    let read = step.read(text, &[], &[]);
    assert_eq!(read.content, text);
    assert!(read.host.is_empty());
}

#[test]
fn tool_choice_that_cannot_be_met_is_refused_before_anything_runs() {
    let mut turn = Turn::new(vec![ChatMessage::new(Role::User, "hi")], Vec::new());
    turn.choice = ToolChoice::Required;
    assert!(matches!(check_choice(&turn), Err(AssistantError::NoTools)));
    turn.host_tools = vec![tool("calc.eval")];
    assert!(check_choice(&turn).is_ok());
    turn.choice = ToolChoice::Function("nope".into());
    assert!(matches!(
        check_choice(&turn),
        Err(AssistantError::UnknownTool(n)) if n == "nope"
    ));
}
