// {{name}}: a hearth plugin in C.
//
// `hearth plugin build` generates bindings/plugin.h (the C API of the world
// in wit/world.wit, itself generated from plugin.toml) before compiling this
// file with `zig cc`. Grant a permission in plugin.toml (`kv = true`) and the
// next build adds its functions (`hearth_plugin_kv_get`, ...) to the header.
//
// Ownership follows the generated bindings: arguments passed to the exported
// functions belong to them (free them), and everything returned must be
// allocated with malloc (plugin_string_dup does), as the bindings free it
// once the host has copied it.

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "plugin.h"

// The arguments of `greet`: exactly one string, `name`. The host checks
// every call against this schema before `invoke` runs.
static const char GREET_SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"}},"
    "\"required\":[\"name\"],\"additionalProperties\":false}";

static void set_error(plugin_string_t *message, const char *text) { plugin_string_dup(message, text); }

static int tool_is(const plugin_string_t *tool, const char *name) {
  return tool->len == strlen(name) && memcmp(tool->ptr, name, tool->len) == 0;
}

void exports_hearth_plugin_guest_describe(exports_hearth_plugin_guest_description_t *ret) {
  hearth_plugin_types_tool_t *tools = calloc(1, sizeof *tools);
  if (!tools) abort();
  plugin_string_dup(&tools[0].name, "greet");
  plugin_string_dup(&tools[0].description, "Greets someone by name");
  plugin_string_dup(&tools[0].parameters_schema, GREET_SCHEMA);
  ret->tools = (hearth_plugin_types_list_tool_t){tools, 1};
  ret->events = (hearth_plugin_types_list_event_kind_t){NULL, 0};
}

bool exports_hearth_plugin_guest_validate_config(plugin_string_t *config, plugin_string_t *err) {
  (void)err;
  plugin_string_free(config);
  return true;
}

// {"name": "Ada"} -> {"greeting": "Hello, Ada!"}
static bool greet(const plugin_string_t *arguments, plugin_string_t *ret,
                  exports_hearth_plugin_guest_tool_error_t *err) {
  buf_t name = {0};
  if (!json_get_string(arguments, "name", &name)) {
    err->tag = HEARTH_PLUGIN_TYPES_TOOL_ERROR_INVALID_ARGUMENTS;
    set_error(&err->val.invalid_arguments, "`name` must be a string");
    return false;
  }
  buf_t greeting = {0};
  buf_str(&greeting, "Hello, ");
  buf_push(&greeting, name.ptr, name.len);
  buf_str(&greeting, "!");
  buf_t out = {0};
  buf_str(&out, "{\"greeting\":");
  buf_json_string(&out, greeting.ptr, greeting.len);
  buf_str(&out, "}");
  // The buffer came from malloc, so it is handed over as it is.
  ret->ptr = (uint8_t *)out.ptr;
  ret->len = out.len;
  free(name.ptr);
  free(greeting.ptr);
  return true;
}

bool exports_hearth_plugin_guest_invoke(plugin_string_t *tool, plugin_string_t *arguments,
                                        exports_hearth_plugin_guest_call_context_t *context,
                                        plugin_string_t *ret,
                                        exports_hearth_plugin_guest_tool_error_t *err) {
  bool ok;
  if (tool_is(tool, "greet")) {
    ok = greet(arguments, ret, err);
  } else {
    err->tag = HEARTH_PLUGIN_TYPES_TOOL_ERROR_UNKNOWN_TOOL;
    plugin_string_dup_n(&err->val.unknown_tool, (const char *)tool->ptr, tool->len);
    ok = false;
  }
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
