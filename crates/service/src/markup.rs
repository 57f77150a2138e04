//! Escaping text for the markup precis writes (HTML pages, the API's docs
//! page), and cutting HTML it is given into markup and text, so that the
//! text can be translated and the markup kept exactly as written.

/// `text` safe inside HTML element content and quoted attribute values.
pub fn escape_html(text: &str) -> String {
    escape(text, true)
}

/// `text` safe inside HTML element content: only `&`, `<` and `>` escaped.
pub fn escape_text(text: &str) -> String {
    escape(text, false)
}

fn escape(text: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if quotes => out.push_str("&quot;"),
            '\'' if quotes => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A piece of an HTML document or fragment, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HtmlPiece<'a> {
    /// A tag, comment, declaration, or the content of a script or style.
    Markup(&'a str),
    /// Text between them (character references not yet decoded).
    Text(&'a str),
}

/// Cuts `html` into markup and text, in order; the pieces put back
/// together are `html`. Forgiving as browsers are: a `<` that opens no tag
/// is text, and an unterminated tag or comment runs to the end.
pub fn html_pieces(html: &str) -> Vec<HtmlPiece<'_>> {
    let bytes = html.as_bytes();
    let mut pieces = Vec::new();
    let (mut at, mut text_from) = (0, 0);
    while let Some(offset) = html[at..].find('<') {
        let start = at + offset;
        let Some(end) = markup_end(html, start) else {
            at = start + 1;
            continue;
        };
        if text_from < start {
            pieces.push(HtmlPiece::Text(&html[text_from..start]));
        }
        let mut end = end;
        // The content of a script or style is never text to translate.
        if let Some(name) = start_tag_name(&html[start..end]) {
            if name.eq_ignore_ascii_case("script") || name.eq_ignore_ascii_case("style") {
                end = closing_tag(html, end, name).unwrap_or(bytes.len());
            }
        }
        pieces.push(HtmlPiece::Markup(&html[start..end]));
        at = end;
        text_from = end;
    }
    if text_from < html.len() {
        pieces.push(HtmlPiece::Text(&html[text_from..]));
    }
    pieces
}

/// Where the first `</name` (any case) at or after `from` starts.
fn closing_tag(html: &str, from: usize, name: &str) -> Option<usize> {
    let bytes = html.as_bytes();
    let mut at = from;
    while let Some(i) = html[at..].find("</") {
        let start = at + i;
        let tag = bytes.get(start + 2..start + 2 + name.len())?;
        if tag.eq_ignore_ascii_case(name.as_bytes()) {
            return Some(start);
        }
        at = start + 2;
    }
    None
}

/// Where the markup opening at `start` (a `<`) ends, or `None` when that
/// `<` opens none (it is text).
fn markup_end(html: &str, start: usize) -> Option<usize> {
    let rest = &html[start..];
    let after = rest.as_bytes().get(1).copied()?;
    if let Some(comment) = rest.strip_prefix("<!--") {
        return Some(
            comment
                .find("-->")
                .map_or(html.len(), |i| start + 4 + i + 3),
        );
    }
    let tag = after.is_ascii_alphabetic()
        || after == b'!'
        || after == b'?'
        || (after == b'/' && rest.as_bytes().get(2).is_some_and(u8::is_ascii_alphabetic));
    if !tag {
        return None;
    }
    // Up to the first `>` outside a quoted attribute value.
    let mut quote = None;
    for (i, b) in rest.bytes().enumerate().skip(1) {
        match (quote, b) {
            (Some(q), b) if b == q => quote = None,
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => return Some(start + i + 1),
            _ => {}
        }
    }
    Some(html.len())
}

/// The element name of a start tag (`<p class="x">` → `p`).
fn start_tag_name(tag: &str) -> Option<&str> {
    let name = tag.strip_prefix('<')?;
    let end = name
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(name.len());
    (end > 0 && name.as_bytes()[0].is_ascii_alphabetic()).then(|| &name[..end])
}

/// `text` with its character references decoded: numeric ones, and the
/// named ones text commonly holds; any other is left as written.
pub fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let decoded = rest[1..]
            .find(';')
            .filter(|&end| end <= 32)
            .and_then(|end| reference(&rest[1..1 + end]).map(|c| (c, end + 2)));
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The character a reference's name (between `&` and `;`) stands for.
fn reference(name: &str) -> Option<char> {
    if let Some(number) = name.strip_prefix('#') {
        let value = match number.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => number.parse().ok()?,
        };
        return char::from_u32(value).filter(|c| *c != '\0');
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "ndash" => '–',
        "mdash" => '—',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "euro" => '€',
        "pound" => '£',
        "deg" => '°',
        "middot" => '·',
        "bull" => '•',
        "shy" => '\u{ad}',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::{decode_entities, html_pieces, HtmlPiece};

    fn texts(html: &str) -> Vec<&str> {
        html_pieces(html)
            .into_iter()
            .filter_map(|p| match p {
                HtmlPiece::Text(t) => Some(t),
                HtmlPiece::Markup(_) => None,
            })
            .collect()
    }

    #[test]
    fn html_is_cut_into_markup_and_text_that_join_back() {
        let html = "<!DOCTYPE html><p class=\"a>b\">Hello <b>big</b> world</p><!-- x < y -->\
                    <script>if (a < b) { x = '</p>'; }</SCRIPT><style>p>b{}</style>1 < 2 &amp; <br/>end";
        let pieces = html_pieces(html);
        let joined: String = pieces
            .iter()
            .map(|p| match p {
                HtmlPiece::Markup(m) | HtmlPiece::Text(m) => *m,
            })
            .collect();
        assert_eq!(joined, html);
        assert_eq!(
            texts(html),
            vec!["Hello ", "big", " world", "1 < 2 &amp; ", "end"]
        );
        assert_eq!(texts("no markup"), vec!["no markup"]);
        assert_eq!(texts("<p unterminated"), Vec::<&str>::new());
        assert_eq!(texts("a <"), vec!["a <"]);
        // Many scripts (each its start tag with its content, its end tag,
        // then text), the last unterminated: each one's end is found once,
        // and the text between them stays text.
        let many = "<script>x</script>a".repeat(20_000) + "<script>y";
        let pieces = html_pieces(&many);
        assert_eq!(pieces.len(), 20_000 * 3 + 1);
        assert_eq!(texts(&many).len(), 20_000);
    }

    #[test]
    fn character_references_are_decoded() {
        assert_eq!(
            decode_entities("Tom &amp; Jerry &lt;3 &#8212; &#x41;&nbsp;&unknown; & so"),
            "Tom & Jerry <3 — A\u{a0}&unknown; & so"
        );
        assert_eq!(decode_entities("&#0; &#xFFFFFFFF;"), "&#0; &#xFFFFFFFF;");
    }

    #[test]
    fn every_markup_character_is_escaped() {
        assert_eq!(
            super::escape_html(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }
}
