"""Real-looking sources in every language codezip chunks with a grammar, and checks that they are what they say.

Each source has functions with control flow and returns, a class-like container where the language has one,
comments and top-level declarations. The ``FUNCTIONS`` map names functions each chunker must find.
"""

from __future__ import annotations

import pytest

JAVASCRIPT = r"""'use strict';
// Small LRU cache with time-to-live entries.
const { EventEmitter } = require('events');

const DEFAULT_TTL = 60 * 1000;

function now() {
  return Date.now();
}

class LruCache extends EventEmitter {
  constructor(limit, ttl = DEFAULT_TTL) {
    super();
    this.limit = limit;
    this.ttl = ttl;
    this.map = new Map();
  }

  get(key) {
    const entry = this.map.get(key);
    if (!entry) {
      this.emit('miss', key);
      return undefined;
    }
    if (entry.expires < now()) {
      this.map.delete(key);
      this.emit('expired', key);
      return undefined;
    }
    this.map.delete(key);
    this.map.set(key, entry);
    return entry.value;
  }

  set(key, value) {
    if (this.map.has(key)) {
      this.map.delete(key);
    }
    this.map.set(key, { value, expires: now() + this.ttl });
    while (this.map.size > this.limit) {
      const oldest = this.map.keys().next().value;
      this.map.delete(oldest);
      this.emit('evict', oldest);
    }
    return this;
  }
}

const memoize = (fn, cache) => {
  return (arg) => {
    const hit = cache.get(arg);
    if (hit !== undefined) {
      return hit;
    }
    const value = fn(arg);
    cache.set(arg, value);
    return value;
  };
};

module.exports = { LruCache, memoize };
"""

TYPESCRIPT = r"""import { readFileSync } from "fs";

export interface Token {
  kind: "number" | "ident" | "op";
  text: string;
  pos: number;
}

const OPERATORS = new Set(["+", "-", "*", "/", "(", ")"]);

export function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < source.length) {
    const ch = source[i];
    if (ch === " " || ch === "\t") {
      i++;
      continue;
    }
    if (OPERATORS.has(ch)) {
      tokens.push({ kind: "op", text: ch, pos: i });
      i++;
      continue;
    }
    let j = i;
    while (j < source.length && !OPERATORS.has(source[j]) && source[j] !== " ") {
      j++;
    }
    const text = source.slice(i, j);
    tokens.push({ kind: /^\d+$/.test(text) ? "number" : "ident", text, pos: i });
    i = j;
  }
  return tokens;
}

export class Parser {
  private index = 0;

  constructor(private readonly tokens: Token[]) {}

  peek(): Token | undefined {
    return this.tokens[this.index];
  }

  expression(): number {
    let value = this.term();
    for (;;) {
      const tok = this.peek();
      if (!tok || (tok.text !== "+" && tok.text !== "-")) {
        break;
      }
      this.index++;
      const rhs = this.term();
      value = tok.text === "+" ? value + rhs : value - rhs;
    }
    return value;
  }

  term(): number {
    const tok = this.tokens[this.index++];
    if (tok.kind === "number") {
      return Number(tok.text);
    }
    throw new Error(`unexpected ${tok.text} at ${tok.pos}`);
  }
}

export function evaluateFile(path: string): number {
  const text = readFileSync(path, "utf8");
  return new Parser(tokenize(text)).expression();
}
"""

JAVA = r"""package org.example.inventory;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/** Keeps stock levels per SKU and records every movement. */
public class Inventory {
    private final Map<String, Integer> stock = new HashMap<>();
    private final List<String> journal = new ArrayList<>();

    public Inventory() {
        journal.add("opened");
    }

    public int level(String sku) {
        Integer n = stock.get(sku);
        if (n == null) {
            return 0;
        }
        return n;
    }

    public void receive(String sku, int quantity) {
        if (quantity <= 0) {
            throw new IllegalArgumentException("quantity must be positive");
        }
        int current = level(sku);
        stock.put(sku, current + quantity);
        journal.add("receive " + sku + " " + quantity);
    }

    public boolean ship(String sku, int quantity) {
        int current = level(sku);
        if (current < quantity) {
            journal.add("short " + sku);
            return false;
        }
        switch (quantity) {
            case 0:
                journal.add("empty shipment");
                break;
            default:
                stock.put(sku, current - quantity);
                journal.add("ship " + sku + " " + quantity);
        }
        return true;
    }

    public List<String> history() {
        List<String> copy = new ArrayList<>(journal);
        for (int i = 0; i < copy.size(); i++) {
            copy.set(i, i + ": " + copy.get(i));
        }
        return copy;
    }
}
"""

GO = r"""// Package ratelimit implements a token bucket.
package ratelimit

import (
	"errors"
	"sync"
	"time"
)

// ErrLimited is returned when no token is available.
var ErrLimited = errors.New("rate limited")

// Bucket is a token bucket safe for concurrent use.
type Bucket struct {
	mu       sync.Mutex
	capacity int
	tokens   int
	refill   time.Duration
	last     time.Time
}

// New returns a full bucket.
func New(capacity int, refill time.Duration) *Bucket {
	return &Bucket{capacity: capacity, tokens: capacity, refill: refill, last: time.Now()}
}

func (b *Bucket) advance(now time.Time) {
	elapsed := now.Sub(b.last)
	if elapsed < b.refill {
		return
	}
	added := int(elapsed / b.refill)
	b.tokens += added
	if b.tokens > b.capacity {
		b.tokens = b.capacity
	}
	b.last = b.last.Add(time.Duration(added) * b.refill)
}

// Take removes one token or fails with ErrLimited.
func (b *Bucket) Take() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(time.Now())
	if b.tokens == 0 {
		return ErrLimited
	}
	b.tokens--
	return nil
}

// Wait blocks until a token is available or the deadline passes.
func (b *Bucket) Wait(deadline time.Time) error {
	for {
		err := b.Take()
		switch {
		case err == nil:
			return nil
		case time.Now().After(deadline):
			return err
		}
		time.Sleep(b.refill / 4)
	}
}
"""

RUST = r"""use std::collections::HashMap;
use std::fmt;

/// A word-frequency table.
#[derive(Debug, Default)]
pub struct Counter {
    counts: HashMap<String, usize>,
    total: usize,
}

impl Counter {
    pub fn new() -> Self {
        Counter { counts: HashMap::new(), total: 0 }
    }

    pub fn add_text(&mut self, text: &str) {
        for word in text.split_whitespace() {
            let word = word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
            if word.is_empty() {
                continue;
            }
            *self.counts.entry(word).or_insert(0) += 1;
            self.total += 1;
        }
    }

    pub fn top(&self, n: usize) -> Vec<(&String, &usize)> {
        let mut items: Vec<_> = self.counts.iter().collect();
        items.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        items.truncate(n);
        items
    }

    pub fn share(&self, word: &str) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let n = self.counts.get(word).copied().unwrap_or(0);
        n as f64 / self.total as f64
    }
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (word, n) in self.top(3) {
            writeln!(f, "{word}: {n}")?;
        }
        write!(f, "total: {}", self.total)
    }
}
"""

C = r"""#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A growable byte buffer. */
typedef struct {
    char *data;
    size_t len;
    size_t cap;
} buffer_t;

static int buffer_reserve(buffer_t *b, size_t extra)
{
    size_t need = b->len + extra;
    if (need <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 16;
    while (cap < need) {
        cap *= 2;
    }
    char *data = realloc(b->data, cap);
    if (data == NULL) {
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

int buffer_append(buffer_t *b, const char *s, size_t n)
{
    if (buffer_reserve(b, n) != 0) {
        return -1;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

int buffer_read_file(buffer_t *b, const char *path)
{
    char chunk[4096];
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return -1;
    }
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (buffer_append(b, chunk, got) != 0) {
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    return 0;
}

void buffer_free(buffer_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
"""

CPP = r"""#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace geometry {

struct Point {
  double x;
  double y;
};

class Polygon {
 public:
  explicit Polygon(std::vector<Point> points) : points_(std::move(points)) {
    if (points_.size() < 3) {
      throw std::invalid_argument("a polygon needs three points");
    }
  }

  double Area() const {
    double twice = 0.0;
    for (size_t i = 0; i < points_.size(); ++i) {
      const Point& a = points_[i];
      const Point& b = points_[(i + 1) % points_.size()];
      twice += a.x * b.y - b.x * a.y;
    }
    return twice < 0 ? -twice / 2.0 : twice / 2.0;
  }

  bool Contains(const Point& p) const {
    bool inside = false;
    for (size_t i = 0, j = points_.size() - 1; i < points_.size(); j = i++) {
      const Point& a = points_[i];
      const Point& b = points_[j];
      if ((a.y > p.y) != (b.y > p.y) &&
          p.x < (b.x - a.x) * (p.y - a.y) / (b.y - a.y) + a.x) {
        inside = !inside;
      }
    }
    return inside;
  }

 private:
  std::vector<Point> points_;
};

template <typename T>
T Clamp(T value, T lo, T hi) {
  if (value < lo) {
    return lo;
  }
  return std::min(value, hi);
}

}  // namespace geometry
"""

PYTHON = r'''"""Plain-text table rendering."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

DEFAULT_WIDTH = 80


@dataclass
class Column:
    name: str
    width: int = 0
    align: str = "<"

    def fit(self, values):
        """Widen the column to its widest value."""
        widest = max((len(str(v)) for v in values), default=0)
        self.width = max(self.width, widest, len(self.name))
        return self.width


class Table:
    """Rows of values under named columns."""

    def __init__(self, *names):
        self.columns = [Column(n) for n in names]
        self.rows = []

    def add(self, *values):
        if len(values) != len(self.columns):
            raise ValueError(f"expected {len(self.columns)} values, got {len(values)}")
        self.rows.append(values)

    def render(self, width=None):
        width = width or shutil.get_terminal_size((DEFAULT_WIDTH, 20)).columns
        for i, col in enumerate(self.columns):
            col.fit(row[i] for row in self.rows)
        lines = []
        header = " ".join(f"{c.name:{c.align}{c.width}}" for c in self.columns)
        lines.append(header[:width])
        lines.append("-" * min(len(header), width))
        for row in self.rows:
            cells = []
            for col, value in zip(self.columns, row):
                if isinstance(value, float):
                    cells.append(f"{value:>{col.width}.2f}")
                else:
                    cells.append(f"{value!s:{col.align}{col.width}}")
            lines.append(" ".join(cells)[:width])
        return "\n".join(lines)


def from_dicts(records, columns=None):
    records = list(records)
    if not records:
        return Table(*(columns or ()))
    columns = columns or list(records[0])
    table = Table(*columns)
    for rec in records:
        try:
            table.add(*(rec.get(c, "") for c in columns))
        except ValueError:
            continue
    return table
'''

SOURCES = {
    "python": PYTHON,
    "javascript": JAVASCRIPT,
    "typescript": TYPESCRIPT,
    "java": JAVA,
    "go": GO,
    "rust": RUST,
    "c": C,
    "cpp": CPP,
}

FILENAMES = {
    "python": "table.py",
    "javascript": "lru.js",
    "typescript": "calc.ts",
    "java": "Inventory.java",
    "go": "bucket.go",
    "rust": "counter.rs",
    "c": "buffer.c",
    "cpp": "polygon.cpp",
}

FUNCTIONS = {
    "python": {"fit", "__init__", "add", "render", "from_dicts"},
    "javascript": {"now", "constructor", "get", "set", "memoize"},
    "typescript": {"tokenize", "peek", "expression", "term", "evaluateFile"},
    "java": {"Inventory", "level", "receive", "ship", "history"},
    "go": {"New", "advance", "Take", "Wait"},
    "rust": {"new", "add_text", "top", "share", "fmt"},
    "c": {"buffer_reserve", "buffer_append", "buffer_read_file", "buffer_free"},
    "cpp": {"Polygon", "Area", "Contains", "Clamp"},
}


@pytest.mark.parametrize("language", sorted(SOURCES))
def test_sources_parse_cleanly(language):
    from ctxzip.code_chunking import detect_language, syntax_errors

    src = SOURCES[language]
    assert detect_language(src, filename=FILENAMES[language]) == language
    assert syntax_errors(src, language) == 0
