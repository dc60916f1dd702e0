"""Prompt weighting syntaxes -> a small structure of weighted text. Pure functions, no model.

compel (after damian0815/compel's syntax):
    word+  word++  word-        x1.1 per +, x0.9 per -          (small+ dog)++   nesting multiplies
    (phrase)1.2                 explicit weight                   \\( \\)           literal brackets
    ("a dog", "robot").blend(1, 0.8)     weighted mix of whole prompts
    ("a dog", "pixar style").and()       prompts encoded apart and joined (optional weights)
sdEmbeds (AUTOMATIC1111's syntax):
    (text)  ((text))  [text]    x1.1 per (), /1.1 per []         (text:1.5)       explicit weight

Either parser returns a Prompt: Weighted (fragments), Blend or Conjunction. Malformed input
raises RequestError whose message gives the column (1-based) of the problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from daguerre.errors import RequestError

UP, DOWN = 1.1, 0.9
SD_UP = 1.1
SYNTAXES = ("compel", "sdEmbeds")


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float


@dataclass(frozen=True)
class Weighted:
    """One prompt: consecutive text fragments, each with a weight."""

    fragments: tuple[Fragment, ...]

    @property
    def text(self) -> str:
        return "".join(f.text for f in self.fragments)


@dataclass(frozen=True)
class Blend:
    """A weighted mix of whole prompts (their embeddings averaged with these weights)."""

    prompts: tuple[Weighted, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class Conjunction:
    """Prompts encoded separately and joined along the sequence ("a", "b").and()."""

    prompts: tuple[Weighted, ...]
    weights: tuple[float, ...]


Prompt = Weighted | Blend | Conjunction


def _fail(text: str, col: int, what: str, parameter: str) -> RequestError:
    return RequestError(
        f"{parameter}: {what} at column {col + 1}: ...{text[max(0, col - 15) : col + 15]!r}...", parameter=parameter
    )


def _merge(fragments: list[Fragment]) -> tuple[Fragment, ...]:
    """Join neighbours of equal weight; drop empty text. Weights are rounded to 10 decimals so that
    equivalent spellings ((x:1.5) and (x)1.5, or 1.1 * 1.5 / 1.1) give identical embeddings."""
    out: list[Fragment] = []
    for f in fragments:
        if not f.text:
            continue
        f = Fragment(f.text, round(f.weight, 10))
        if out and out[-1].weight == f.weight:
            out[-1] = Fragment(out[-1].text + f.text, f.weight)
        else:
            out.append(f)
    return tuple(out)


# ---------------------------------------------------------------- compel

_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_CALL = re.compile(r"\)\s*\.\s*(blend|and)\s*\(")


def parse_compel(text: str, parameter: str = "positivePrompt") -> Prompt:
    """Parse compel syntax (see the module docstring)."""
    stripped = text.strip()
    if stripped.startswith("(") and _CALL.search(stripped):
        return _compel_call(stripped, parameter)
    fragments, pos = _compel_seq(text, 0, 1.0, parameter, depth=0)
    if pos != len(text):
        raise _fail(text, pos, "unexpected ')'", parameter)
    return Weighted(_merge(fragments))


def _compel_seq(text: str, pos: int, weight: float, parameter: str, depth: int) -> tuple[list[Fragment], int]:
    """Fragments until a closing ')' (not consumed) or the end."""
    out: list[Fragment] = []
    word = ""
    while pos < len(text):
        c = text[pos]
        if c == "\\" and pos + 1 < len(text) and text[pos + 1] in "()+-\\":
            word += text[pos + 1]
            pos += 2
            continue
        if c == "(":
            if word:
                out.append(Fragment(word, weight))
                word = ""
            inner, end = _compel_seq(text, pos + 1, 1.0, parameter, depth + 1)
            if end >= len(text) or text[end] != ")":
                raise _fail(text, pos, "'(' is never closed", parameter)
            factor, pos = _compel_suffix(text, end + 1)
            out += [Fragment(f.text, f.weight * factor * weight) for f in inner]
            continue
        if c == ")":
            if depth == 0:
                raise _fail(text, pos, "unexpected ')'", parameter)
            break
        if c in "+-" and word and not word[-1].isspace():
            factor, pos = _compel_suffix(text, pos)
            tail = re.search(r"\S+$", word)  # the suffix weights the last word only
            head, last = word[: tail.start()], word[tail.start() :]
            if head:
                out.append(Fragment(head, weight))
            out.append(Fragment(last, weight * factor))
            word = ""
            continue
        word += c
        pos += 1
    if word:
        out.append(Fragment(word, weight))
    return out, pos


def _compel_suffix(text: str, pos: int) -> tuple[float, int]:
    """The weight after a word or ')': +/- runs or a number; 1.0 if none."""
    m = re.match(r"\++|-+", text[pos:])
    if m:
        n = len(m.group())
        return (UP**n if m.group()[0] == "+" else DOWN**n), pos + n
    m = _NUMBER.match(text[pos:])
    if m:
        return float(m.group()), pos + len(m.group())
    return 1.0, pos


def _compel_call(text: str, parameter: str) -> Prompt:
    """("a", "b").blend(w1, w2) or ("a", "b").and(...)."""
    m = re.fullmatch(r"\(\s*(.*)\s*\)\s*\.\s*(blend|and)\s*\(([^()]*)\)\s*", text, re.S)
    if not m:
        raise _fail(text, 0, 'malformed .blend()/.and() expression: expected ("a", "b").blend(1, 0.5)', parameter)
    args, op, raw_weights = m.group(1), m.group(2), m.group(3)
    prompts = []
    pos = text.index(args) if args else 1
    for q in re.finditer(r'"((?:[^"\\]|\\.)*)"\s*(,|$)', args):
        prompts.append(parse_compel(q.group(1).replace('\\"', '"'), parameter))
    if not prompts or re.sub(r'"((?:[^"\\]|\\.)*)"\s*,?\s*', "", args).strip():
        raise _fail(text, pos, f"the .{op}() operands must be quoted prompts separated by commas", parameter)
    if any(not isinstance(p, Weighted) for p in prompts):
        raise _fail(text, pos, f".{op}() operands cannot themselves be blends or conjunctions", parameter)
    weights = [w.strip() for w in raw_weights.split(",") if w.strip()]
    try:
        values = tuple(float(w) for w in weights)
    except ValueError:
        raise _fail(text, text.rindex("("), f"the .{op}() weights must be numbers", parameter) from None
    if op == "blend" and len(values) != len(prompts):
        raise _fail(text, text.rindex("("), f".blend() needs one weight per prompt ({len(prompts)})", parameter)
    if op == "and" and values and len(values) != len(prompts):
        raise _fail(text, text.rindex("("), f".and() takes no weights or one per prompt ({len(prompts)})", parameter)
    if op == "blend" and sum(values) <= 0:
        raise _fail(text, text.rindex("("), ".blend() weights must add up to more than 0", parameter)
    cls = Blend if op == "blend" else Conjunction
    return cls(prompts=tuple(prompts), weights=values or (1.0,) * len(prompts))


# ---------------------------------------------------------------- sdEmbeds


def parse_sd(text: str, parameter: str = "positivePrompt") -> Weighted:
    """Parse AUTOMATIC1111 emphasis: (x), [x], (x:1.5), nesting multiplies, backslash escapes."""
    out: list[Fragment] = []
    stack: list[tuple[str, int, int]] = []  # (bracket, column, index in out where the group starts)
    buf = ""
    weights = [1.0]
    pos = 0

    def flush():
        nonlocal buf
        if buf:
            out.append(Fragment(buf, weights[-1]))
            buf = ""

    while pos < len(text):
        c = text[pos]
        if c == "\\" and pos + 1 < len(text) and text[pos + 1] in "()[]\\:":
            buf += text[pos + 1]
            pos += 2
            continue
        if c in "([":
            flush()
            stack.append((c, pos, len(out)))
            weights.append(weights[-1] * (SD_UP if c == "(" else 1 / SD_UP))
        elif c == ")":
            if not stack or stack[-1][0] != "(":
                raise _fail(text, pos, "unexpected ')'", parameter)
            m = re.search(r":\s*(-?\d+(?:\.\d+)?|-?\.\d+)\s*$", buf)
            explicit = None
            if m:  # (text:1.5): an explicit weight replaces the group's x1.1
                buf, explicit = buf[: m.start()], float(m.group(1))
            flush()
            start = stack.pop()[2]
            weights.pop()
            if explicit is not None:
                out[start:] = [Fragment(f.text, f.weight / SD_UP * explicit) for f in out[start:]]
        elif c == "]":
            if not stack or stack[-1][0] != "[":
                raise _fail(text, pos, "unexpected ']'", parameter)
            flush()
            stack.pop()
            weights.pop()
        else:
            buf += c
        pos += 1
    if stack:
        raise _fail(text, stack[-1][1], f"'{stack[-1][0]}' is never closed", parameter)
    flush()
    return Weighted(_merge(out))


def parse(text: str, syntax: str, parameter: str = "positivePrompt") -> Prompt:
    if syntax == "compel":
        return parse_compel(text, parameter)
    if syntax == "sdEmbeds":
        return parse_sd(text, parameter)
    raise RequestError(
        f"promptWeighting must be one of {', '.join(SYNTAXES)}, got {syntax!r}", parameter="promptWeighting"
    )
