//! {{name}}: a hearth plugin in Zig.
//!
//! `hearth plugin build` generates the C bindings of the world in
//! wit/world.wit (itself generated from plugin.toml), translates their header
//! to Zig as the module `plugin`, and builds this file with them. Grant a
//! permission in plugin.toml (`kv = true`) and the next build adds its
//! functions (`hearth_plugin_kv_get`, ...) to that module.
//!
//! Ownership follows the generated bindings: arguments passed to the
//! exported functions belong to them (free them), and everything returned
//! must come from malloc (`plugin_string_dup_n` copies into it), as the
//! bindings free it once the host has copied it.

const std = @import("std");
const c = @import("plugin");

/// A panic writes its message to stderr, which hearth shows with the trap,
/// and stops the call. (Zig's default handler would build most of the
/// standard library's I/O into the component.)
pub const panic = std.debug.FullPanic(struct {
    fn panic(message: []const u8, _: ?usize) noreturn {
        _ = std.c.write(2, "panic: ", 7);
        _ = std.c.write(2, message.ptr, message.len);
        _ = std.c.write(2, "\n", 1);
        @trap();
    }
}.panic);

/// The arguments of `greet`: exactly one string, `name`. The host checks
/// every call against this schema before `invoke` runs.
const greet_schema =
    \\{"type":"object","properties":{"name":{"type":"string"}},"required":["name"],"additionalProperties":false}
;

/// A malloc'd copy of `text` into `out`.
fn dup(out: *c.plugin_string_t, text: []const u8) void {
    c.plugin_string_dup_n(out, text.ptr, text.len);
}

/// The bytes of a string the host passed in.
fn bytes(s: *const c.plugin_string_t) []const u8 {
    return if (s.len == 0) "" else s.ptr[0..s.len];
}

export fn exports_hearth_plugin_guest_describe(ret: *c.exports_hearth_plugin_guest_description_t) void {
    const tools: [*]c.hearth_plugin_types_tool_t = @ptrCast(@alignCast(std.c.malloc(@sizeOf(c.hearth_plugin_types_tool_t)) orelse @panic("out of memory")));
    dup(&tools[0].name, "greet");
    dup(&tools[0].description, "Greets someone by name");
    dup(&tools[0].parameters_schema, greet_schema);
    ret.* = .{ .tools = .{ .ptr = tools, .len = 1 }, .events = .{ .ptr = null, .len = 0 } };
}

export fn exports_hearth_plugin_guest_validate_config(config: *c.plugin_string_t, err: *c.plugin_string_t) bool {
    _ = err;
    c.plugin_string_free(config);
    return true;
}

/// {"name": "Ada"} -> {"greeting": "Hello, Ada!"}
fn greet(a: std.mem.Allocator, arguments: []const u8) ![]const u8 {
    const args = try std.json.parseFromSliceLeaky(struct { name: []const u8 }, a, arguments, .{});
    const greeting = try std.fmt.allocPrint(a, "Hello, {s}!", .{args.name});
    return std.json.Stringify.valueAlloc(a, .{ .greeting = greeting }, .{});
}

export fn exports_hearth_plugin_guest_invoke(
    tool: *c.plugin_string_t,
    arguments: *c.plugin_string_t,
    context: *c.exports_hearth_plugin_guest_call_context_t,
    ret: *c.plugin_string_t,
    err: *c.exports_hearth_plugin_guest_tool_error_t,
) bool {
    defer c.plugin_string_free(tool);
    defer c.plugin_string_free(arguments);
    defer c.exports_hearth_plugin_guest_call_context_free(context);
    // Everything a call allocates goes at once when it returns.
    var arena = std.heap.ArenaAllocator.init(std.heap.c_allocator);
    defer arena.deinit();
    const name = bytes(tool);
    if (std.mem.eql(u8, name, "greet")) {
        const json = greet(arena.allocator(), bytes(arguments)) catch |e| {
            err.tag = c.HEARTH_PLUGIN_TYPES_TOOL_ERROR_INVALID_ARGUMENTS;
            dup(&err.val.invalid_arguments, @errorName(e));
            return false;
        };
        dup(ret, json);
        return true;
    }
    err.tag = c.HEARTH_PLUGIN_TYPES_TOOL_ERROR_UNKNOWN_TOOL;
    dup(&err.val.unknown_tool, name);
    return false;
}

export fn exports_hearth_plugin_guest_on_event(
    event: *c.exports_hearth_plugin_guest_event_t,
    ret: *c.exports_hearth_plugin_guest_event_outcome_t,
) void {
    c.exports_hearth_plugin_guest_event_free(event);
    ret.tag = c.HEARTH_PLUGIN_TYPES_EVENT_OUTCOME_PROCEED;
}
