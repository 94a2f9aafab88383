// Just enough JSON for this plugin's tools: reading the string members of
// an object and writing string literals. Arguments reach `invoke` already
// checked against the tool's schema, so the reader need not handle every
// kind of value; replace this with a full JSON library (cJSON, yyjson, ...)
// as your tools grow.

#ifndef JSON_H
#define JSON_H

#include <stdlib.h>
#include <string.h>

#include "plugin.h"

// A growable byte buffer.
typedef struct {
  char *ptr;
  size_t len, cap;
} buf_t;

static inline void buf_push(buf_t *b, const char *s, size_t n) {
  if (b->len + n > b->cap) {
    b->cap = (b->len + n) * 2 + 16;
    b->ptr = realloc(b->ptr, b->cap);
    if (!b->ptr) abort();
  }
  memcpy(b->ptr + b->len, s, n);
  b->len += n;
}

static inline void buf_str(buf_t *b, const char *s) { buf_push(b, s, strlen(s)); }

// Appends code point `cp` as UTF-8.
static inline void buf_utf8(buf_t *b, unsigned cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (char)cp, n = 1;
  } else if (cp < 0x800) {
    u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
  } else if (cp < 0x10000) {
    u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    u[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
  } else {
    u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    u[2] = (char)(0x80 | (cp >> 6 & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
  }
  buf_push(b, u, n);
}

// Appends `s` as a JSON string literal, quotes included.
static inline void buf_json_string(buf_t *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  buf_push(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\') {
      char esc[2] = {'\\', (char)ch};
      buf_push(b, esc, 2);
    } else if (ch < 0x20) {
      char esc[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
      buf_push(b, esc, 6);
    } else {
      buf_push(b, (const char *)&ch, 1);
    }
  }
  buf_push(b, "\"", 1);
}

// A cursor over JSON text.
typedef struct {
  const char *p, *end;
} json_t;

static inline void json_ws(json_t *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static inline int json_hex4(json_t *j) {
  if (j->end - j->p < 4) return -1;
  int v = 0;
  for (int i = 0; i < 4; i++) {
    char h = *j->p++;
    v <<= 4;
    if (h >= '0' && h <= '9') v |= h - '0';
    else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
    else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
    else return -1;
  }
  return v;
}

// Reads a JSON string literal into `out` (decoded, not terminated).
static inline int json_string(json_t *j, buf_t *out) {
  json_ws(j);
  if (j->p >= j->end || *j->p != '"') return 0;
  j->p++;
  while (j->p < j->end && *j->p != '"') {
    if (*j->p != '\\') {
      buf_push(out, j->p++, 1);
      continue;
    }
    if (++j->p >= j->end) return 0;
    char e = *j->p++;
    const char *simple = strchr("\"\\/bfnrt", e);
    if (e && simple) {
      buf_push(out, &"\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"], 1);
    } else if (e == 'u') {
      int cp = json_hex4(j);
      if (cp < 0) return 0;
      // A high surrogate followed by a low one is one code point.
      if (cp >= 0xD800 && cp < 0xDC00 && j->end - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u') {
        json_t look = {j->p + 2, j->end};
        int lo = json_hex4(&look);
        if (lo >= 0xDC00 && lo < 0xE000) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          j->p = look.p;
        }
      }
      // A lone surrogate cannot be UTF-8: it becomes U+FFFD.
      buf_utf8(out, (cp >= 0xD800 && cp < 0xE000) ? 0xFFFD : (unsigned)cp);
    } else {
      return 0;
    }
  }
  if (j->p >= j->end) return 0;
  j->p++;
  return 1;
}

// Reads the string member `key` of the JSON object `text`, which the
// schema says has only string members. Returns 0 if it is not there.
static inline int json_get_string(const plugin_string_t *text, const char *key, buf_t *out) {
  json_t j = {(const char *)text->ptr, (const char *)text->ptr + text->len};
  json_ws(&j);
  if (j.p >= j.end || *j.p++ != '{') return 0;
  json_ws(&j);
  if (j.p < j.end && *j.p == '}') return 0;
  for (;;) {
    buf_t name = {0};
    buf_t value = {0};
    int ok = json_string(&j, &name);
    json_ws(&j);
    ok = ok && j.p < j.end && *j.p++ == ':' && json_string(&j, &value);
    int found = ok && name.len == strlen(key) && memcmp(name.ptr, key, name.len) == 0;
    free(name.ptr);
    if (found) {
      *out = value;
      return 1;
    }
    free(value.ptr);
    json_ws(&j);
    if (!ok || j.p >= j.end || *j.p++ != ',') return 0;
  }
}

#endif
