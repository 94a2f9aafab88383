//! words: a hearth plugin in Zig.
//!
//!   words.stats    {"text": "..."}             -> {"words": n, "unique": n, "longest": "..."}
//!   words.top      {"text": "...", "count": 5} -> {"top": [{"word": "the", "count": 3}, ...]}
//!   words.slug     {"title": "Hello, World!"}  -> {"slug": "hello-world"}
//!   words.summary  {"text": "..."}             -> {"stats": <text.stats>, "top": [...]}
//!
//! `summary` calls `text.stats` of the C example (examples/plugins/c): the
//! `[dependencies]` of plugin.toml grant the `tools` import, so the module
//! `plugin` that `hearth plugin build` generates declares
//! `hearth_plugin_tools_call`.
//!
//! Ownership follows the generated bindings: arguments passed to the
//! exported functions belong to them (free them); arguments passed to imports
//! stay the caller's, and what imports return becomes the caller's;
//! everything returned to the host must come from malloc.

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

const Tool = struct { name: []const u8, description: []const u8, schema: []const u8 };

const tools = [_]Tool{
    .{
        .name = "stats",
        .description = "Counts a text's words (letters and digits, lowercased) and distinct words, and finds its longest word",
        .schema =
        \\{"type":"object","properties":{"text":{"type":"string"}},"required":["text"],"additionalProperties":false}
        ,
    },
    .{
        .name = "top",
        .description = "The most frequent words of a text (letters and digits, lowercased), most frequent first",
        .schema =
        \\{"type":"object","properties":{"text":{"type":"string"},"count":{"type":"integer","minimum":1,"maximum":100,"default":5}},"required":["text"],"additionalProperties":false}
        ,
    },
    .{
        .name = "slug",
        .description = "Makes a URL slug of a title: lowercase ASCII letters and digits joined by hyphens",
        .schema =
        \\{"type":"object","properties":{"title":{"type":"string"}},"required":["title"],"additionalProperties":false}
        ,
    },
    .{
        .name = "summary",
        .description = "The counts of text.stats and the five most frequent words of a text",
        .schema =
        \\{"type":"object","properties":{"text":{"type":"string"}},"required":["text"],"additionalProperties":false}
        ,
    },
};

/// A malloc'd copy of `text` into `out`.
fn dup(out: *c.plugin_string_t, text: []const u8) void {
    c.plugin_string_dup_n(out, text.ptr, text.len);
}

/// The bytes of a string.
fn bytes(s: *const c.plugin_string_t) []const u8 {
    return if (s.len == 0) "" else s.ptr[0..s.len];
}

/// A string to pass to an import; it stays ours.
fn borrow(text: []const u8) c.plugin_string_t {
    return .{ .ptr = @constCast(text.ptr), .len = text.len };
}

const Count = struct { word: []const u8, count: u32 };

/// Word frequencies, most frequent first (then alphabetical): words are
/// runs of ASCII letters and digits (and any non-ASCII bytes, so that "café"
/// stays one word), lowercased.
fn frequencies(a: std.mem.Allocator, text: []const u8) ![]const Count {
    var counts: std.StringHashMapUnmanaged(u32) = .empty;
    var i: usize = 0;
    while (i < text.len) {
        while (i < text.len and !isWordByte(text[i])) i += 1;
        const start = i;
        while (i < text.len and isWordByte(text[i])) i += 1;
        if (i == start) break;
        const word = try std.ascii.allocLowerString(a, text[start..i]);
        const entry = try counts.getOrPut(a, word);
        entry.value_ptr.* = if (entry.found_existing) entry.value_ptr.* + 1 else 1;
    }
    var list: std.ArrayList(Count) = .empty;
    var it = counts.iterator();
    while (it.next()) |e| try list.append(a, .{ .word = e.key_ptr.*, .count = e.value_ptr.* });
    std.mem.sort(Count, list.items, {}, struct {
        fn lessThan(_: void, x: Count, y: Count) bool {
            if (x.count != y.count) return x.count > y.count;
            return std.mem.lessThan(u8, x.word, y.word);
        }
    }.lessThan);
    return list.items;
}

/// The `n` most frequent words.
fn top(a: std.mem.Allocator, text: []const u8, n: u32) ![]const Count {
    const all = try frequencies(a, text);
    return all[0..@min(all.len, n)];
}

const Stats = struct { words: u32, unique: usize, longest: []const u8 };

fn stats(a: std.mem.Allocator, text: []const u8) !Stats {
    const all = try frequencies(a, text);
    var result: Stats = .{ .words = 0, .unique = all.len, .longest = "" };
    for (all) |e| {
        result.words += e.count;
        // The first of the longest, alphabetically, so the answer is stable.
        if (e.word.len > result.longest.len or
            (e.word.len == result.longest.len and std.mem.lessThan(u8, e.word, result.longest)))
        {
            result.longest = e.word;
        }
    }
    return result;
}

fn isWordByte(b: u8) bool {
    return std.ascii.isAlphanumeric(b) or b >= 0x80;
}

fn slug(a: std.mem.Allocator, title: []const u8) ![]const u8 {
    var out: std.ArrayList(u8) = .empty;
    var gap = false;
    for (title) |b| {
        if (std.ascii.isAlphanumeric(b)) {
            if (gap and out.items.len > 0) try out.append(a, '-');
            try out.append(a, std.ascii.toLower(b));
            gap = false;
        } else {
            gap = true;
        }
    }
    return out.items;
}

/// Why a tool failed, for the host.
const Failure = struct { tag: u8, message: []const u8 };

/// Runs one tool; returns its JSON result, or sets `failure`.
fn run(a: std.mem.Allocator, tool: []const u8, arguments: []const u8, failure: *?Failure) ![]const u8 {
    const stringify = std.json.Stringify.valueAlloc;
    if (std.mem.eql(u8, tool, "stats")) {
        const args = try std.json.parseFromSliceLeaky(struct { text: []const u8 }, a, arguments, .{});
        return stringify(a, try stats(a, args.text), .{});
    }
    if (std.mem.eql(u8, tool, "top")) {
        const args = try std.json.parseFromSliceLeaky(struct { text: []const u8, count: u32 = 5 }, a, arguments, .{});
        return stringify(a, .{ .top = try top(a, args.text, args.count) }, .{});
    }
    if (std.mem.eql(u8, tool, "slug")) {
        const args = try std.json.parseFromSliceLeaky(struct { title: []const u8 }, a, arguments, .{});
        return stringify(a, .{ .slug = try slug(a, args.title) }, .{});
    }
    if (std.mem.eql(u8, tool, "summary")) {
        const args = try std.json.parseFromSliceLeaky(struct { text: []const u8 }, a, arguments, .{});
        var name = borrow("text.stats");
        var call_args = borrow(try stringify(a, .{ .text = args.text }, .{}));
        var result: c.plugin_string_t = .{};
        var err: c.hearth_plugin_tools_tool_error_t = .{};
        if (!c.hearth_plugin_tools_call(&name, &call_args, &result, &err)) {
            defer c.hearth_plugin_types_tool_error_free(&err);
            // Every variant of tool-error carries one string, at the same place.
            failure.* = .{
                .tag = c.HEARTH_PLUGIN_TYPES_TOOL_ERROR_UNAVAILABLE,
                .message = try std.fmt.allocPrint(a, "text.stats failed: {s}", .{bytes(&err.val.failed)}),
            };
            return error.Failed;
        }
        defer c.plugin_string_free(&result);
        const counts = try std.json.parseFromSliceLeaky(std.json.Value, a, bytes(&result), .{});
        return stringify(a, .{ .stats = counts, .top = try top(a, args.text, 5) }, .{});
    }
    failure.* = .{ .tag = c.HEARTH_PLUGIN_TYPES_TOOL_ERROR_UNKNOWN_TOOL, .message = tool };
    return error.Failed;
}

export fn exports_hearth_plugin_guest_describe(ret: *c.exports_hearth_plugin_guest_description_t) void {
    const list: [*]c.hearth_plugin_types_tool_t = @ptrCast(@alignCast(std.c.malloc(@sizeOf(c.hearth_plugin_types_tool_t) * tools.len) orelse @panic("out of memory")));
    for (tools, 0..) |t, i| {
        dup(&list[i].name, t.name);
        dup(&list[i].description, t.description);
        dup(&list[i].parameters_schema, t.schema);
    }
    ret.* = .{ .tools = .{ .ptr = list, .len = tools.len }, .events = .{ .ptr = null, .len = 0 } };
}

export fn exports_hearth_plugin_guest_validate_config(config: *c.plugin_string_t, err: *c.plugin_string_t) bool {
    _ = err;
    c.plugin_string_free(config);
    return true;
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
    var failure: ?Failure = null;
    const json = run(arena.allocator(), bytes(tool), bytes(arguments), &failure) catch |e| {
        const f = failure orelse Failure{
            .tag = if (e == error.OutOfMemory) c.HEARTH_PLUGIN_TYPES_TOOL_ERROR_FAILED else c.HEARTH_PLUGIN_TYPES_TOOL_ERROR_INVALID_ARGUMENTS,
            .message = @errorName(e),
        };
        err.tag = f.tag;
        dup(&err.val.failed, f.message);
        return false;
    };
    dup(ret, json);
    return true;
}

export fn exports_hearth_plugin_guest_on_event(
    event: *c.exports_hearth_plugin_guest_event_t,
    ret: *c.exports_hearth_plugin_guest_event_outcome_t,
) void {
    c.exports_hearth_plugin_guest_event_free(event);
    ret.tag = c.HEARTH_PLUGIN_TYPES_EVENT_OUTCOME_PROCEED;
}
