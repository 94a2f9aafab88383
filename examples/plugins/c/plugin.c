// text: a hearth plugin in C.
//
//   text.stats  {"text": "..."} -> {"bytes": n, "chars": n, "words": n, "lines": n}
//   text.tally  {"text": "..."} -> {"calls": n, "words": n}, running totals
//                                  kept in the plugin's key-value store
//
// `hearth plugin build` generates bindings/plugin.h from plugin.toml (which
// grants `kv`, so the header declares hearth_plugin_kv_get/set) and compiles
// this file and json.h's helpers with `zig cc`.
//
// Ownership follows the generated bindings: arguments passed to the exported
// functions belong to them (free them); arguments passed to imports stay the
// caller's, and what imports return becomes the caller's (free it);
// everything returned to the host must come from malloc.

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "plugin.h"

// Both tools take exactly one string, `text`; the host checks every call
// against the schema before `invoke` runs.
static const char TEXT_SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\","
    "\"description\":\"The text to count\"}},"
    "\"required\":[\"text\"],\"additionalProperties\":false}";

// The key-value key holding the running totals, as "CALLS WORDS".
static const char TOTALS_KEY[] = "totals";

typedef struct {
  unsigned long long bytes, chars, words, lines;
} counts_t;

static int is_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Counts UTF-8 text: characters are Unicode scalar values (bytes that do not
// continue a sequence), words are runs of characters between ASCII
// whitespace, and a last line without a newline still counts as a line.
static counts_t count(const char *s, size_t n) {
  counts_t c = {0};
  c.bytes = n;
  int in_word = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if ((ch & 0xC0) != 0x80) c.chars++;
    if (ch == '\n') c.lines++;
    if (is_space(ch)) {
      in_word = 0;
    } else if (!in_word) {
      in_word = 1;
      c.words++;
    }
  }
  if (n > 0 && s[n - 1] != '\n') c.lines++;
  return c;
}

static void set_error(exports_hearth_plugin_guest_tool_error_t *err, uint8_t tag, const char *text) {
  err->tag = tag;
  // Every variant of tool-error carries one string, at the same place.
  plugin_string_dup(&err->val.failed, text);
}

static void kv_error(exports_hearth_plugin_guest_tool_error_t *err, hearth_plugin_kv_error_t *e) {
  buf_t message = {0};
  buf_str(&message, "the key-value store failed: ");
  buf_push(&message, (const char *)e->val.io.ptr, e->val.io.len);
  err->tag = HEARTH_PLUGIN_TYPES_TOOL_ERROR_FAILED;
  err->val.failed = (plugin_string_t){(uint8_t *)message.ptr, message.len};
  hearth_plugin_kv_error_free(e);
}

static void hand_over(buf_t *out, plugin_string_t *ret) {
  // The buffer came from malloc, so it is handed over as it is.
  ret->ptr = (uint8_t *)out->ptr;
  ret->len = out->len;
}

static bool stats(const buf_t *text, plugin_string_t *ret) {
  counts_t c = count(text->ptr, text->len);
  buf_t out = {0};
  buf_str(&out, "{\"bytes\":");
  buf_u64(&out, c.bytes);
  buf_str(&out, ",\"chars\":");
  buf_u64(&out, c.chars);
  buf_str(&out, ",\"words\":");
  buf_u64(&out, c.words);
  buf_str(&out, ",\"lines\":");
  buf_u64(&out, c.lines);
  buf_str(&out, "}");
  hand_over(&out, ret);
  return true;
}

static bool tally(const buf_t *text, plugin_string_t *ret,
                  exports_hearth_plugin_guest_tool_error_t *err) {
  plugin_string_t key;
  plugin_string_set(&key, TOTALS_KEY);
  plugin_option_list_u8_t stored;
  hearth_plugin_kv_error_t e;
  if (!hearth_plugin_kv_get(&key, &stored, &e)) {
    kv_error(err, &e);
    return false;
  }
  unsigned long long calls = 0, words = 0;
  if (stored.is_some) {
    // At most two numbers of 20 digits and a space: anything longer was not
    // written by this plugin and is ignored.
    char text_totals[48] = {0};
    if (stored.val.len < sizeof text_totals) {
      memcpy(text_totals, stored.val.ptr, stored.val.len);
      char *end;
      calls = strtoull(text_totals, &end, 10);
      words = strtoull(end, NULL, 10);
    }
    plugin_option_list_u8_free(&stored);
  }
  calls += 1;
  words += count(text->ptr, text->len).words;

  buf_t value = {0};
  buf_u64(&value, calls);
  buf_str(&value, " ");
  buf_u64(&value, words);
  plugin_list_u8_t bytes = {(uint8_t *)value.ptr, value.len};
  bool ok = hearth_plugin_kv_set(&key, &bytes, &e);
  free(value.ptr);
  if (!ok) {
    kv_error(err, &e);
    return false;
  }
  buf_t out = {0};
  buf_str(&out, "{\"calls\":");
  buf_u64(&out, calls);
  buf_str(&out, ",\"words\":");
  buf_u64(&out, words);
  buf_str(&out, "}");
  hand_over(&out, ret);
  return true;
}

static void tool(hearth_plugin_types_tool_t *t, const char *name, const char *description) {
  plugin_string_dup(&t->name, name);
  plugin_string_dup(&t->description, description);
  plugin_string_dup(&t->parameters_schema, TEXT_SCHEMA);
}

void exports_hearth_plugin_guest_describe(exports_hearth_plugin_guest_description_t *ret) {
  hearth_plugin_types_tool_t *tools = calloc(2, sizeof *tools);
  if (!tools) abort();
  tool(&tools[0], "stats",
       "Counts the bytes, characters (Unicode scalar values), words (runs between whitespace) "
       "and lines of a text");
  tool(&tools[1], "tally",
       "Adds a text's words to a running total kept across calls; returns the calls and words "
       "so far");
  ret->tools = (hearth_plugin_types_list_tool_t){tools, 2};
  ret->events = (hearth_plugin_types_list_event_kind_t){NULL, 0};
}

bool exports_hearth_plugin_guest_validate_config(plugin_string_t *config, plugin_string_t *err) {
  (void)err;
  plugin_string_free(config);
  return true;
}

static int tool_is(const plugin_string_t *tool, const char *name) {
  return tool->len == strlen(name) && memcmp(tool->ptr, name, tool->len) == 0;
}

bool exports_hearth_plugin_guest_invoke(plugin_string_t *tool, plugin_string_t *arguments,
                                        exports_hearth_plugin_guest_call_context_t *context,
                                        plugin_string_t *ret,
                                        exports_hearth_plugin_guest_tool_error_t *err) {
  bool ok = false;
  buf_t text = {0};
  if (!tool_is(tool, "stats") && !tool_is(tool, "tally")) {
    err->tag = HEARTH_PLUGIN_TYPES_TOOL_ERROR_UNKNOWN_TOOL;
    plugin_string_dup_n(&err->val.unknown_tool, (const char *)tool->ptr, tool->len);
  } else if (!json_get_string(arguments, "text", &text)) {
    set_error(err, HEARTH_PLUGIN_TYPES_TOOL_ERROR_INVALID_ARGUMENTS, "`text` must be a string");
  } else if (tool_is(tool, "stats")) {
    ok = stats(&text, ret);
  } else {
    ok = tally(&text, ret, err);
  }
  free(text.ptr);
  plugin_string_free(tool);
  plugin_string_free(arguments);
  exports_hearth_plugin_guest_call_context_free(context);
  return ok;
}

void exports_hearth_plugin_guest_on_event(exports_hearth_plugin_guest_event_t *event,
                                          exports_hearth_plugin_guest_event_outcome_t *ret) {
  exports_hearth_plugin_guest_event_free(event);
  ret->tag = HEARTH_PLUGIN_TYPES_EVENT_OUTCOME_PROCEED;
}
