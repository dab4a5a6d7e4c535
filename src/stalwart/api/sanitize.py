"""HTML sanitizing of note bodies (nh3: Rust's ammonia), to an allow-list."""

from __future__ import annotations

import nh3

__all__ = ["sanitize_html"]

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "ins", "kbd", "li", "ol", "p", "pre", "s", "strong", "sub", "sup",
    "table", "tbody", "td", "th", "thead", "tr", "ul",
}
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "abbr": {"title"}}
# No javascript:, data: or vbscript: URLs; ammonia drops any other scheme.
_SCHEMES = {"http", "https", "mailto"}


def sanitize_html(text: str) -> str:
    if "<" not in text and "&" not in text and ">" not in text:
        return text  # plain text and Markdown without HTML need no parse
    return nh3.clean(
        text, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes=_SCHEMES, link_rel="noopener noreferrer"
    )
