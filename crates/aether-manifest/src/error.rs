//! Errors: located diagnostics for bad Aetherfiles, and the rest.

use std::ops::Range;
use std::path::PathBuf;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};

/// Everything that can go wrong when loading a manifest.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ManifestError {
    /// The Aetherfile is invalid: bad TOML, an unknown key, a wrong type or a value out of its
    /// rules. Displays as `file:line:col: message` and renders the source with a caret and a hint.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(Box<SourceError>),

    /// The Aetherfile could not be read.
    #[error("{}: cannot read the Aetherfile: {source}", path.display())]
    #[diagnostic(
        code(aether::manifest::io),
        help("run the command in the directory that holds the Aetherfile, or pass its path")
    )]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// A canonical JSON manifest (the signed form) is malformed or breaks a rule.
    #[error("invalid canonical manifest JSON: {message}")]
    #[diagnostic(code(aether::manifest::canonical))]
    Canonical {
        /// What is wrong, naming the field (e.g. `http.routes[0].path: …`) where known.
        message: String,
    },
}

impl ManifestError {
    /// File, 1-based line and 1-based column (in characters) of the offending text, when the error
    /// points into an Aetherfile.
    pub fn location(&self) -> Option<(String, usize, usize)> {
        match self {
            ManifestError::Invalid(e) => Some((e.file.clone(), e.line, e.column)),
            ManifestError::Io { .. } | ManifestError::Canonical { .. } => None,
        }
    }

    /// The hint attached to the error, if any.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid(e) => e.help.as_deref(),
            ManifestError::Io { .. } | ManifestError::Canonical { .. } => None,
        }
    }
}

/// A problem at a place in an Aetherfile.
///
/// Displays as `file:line:col: message`; as a [`miette::Diagnostic`] it carries the source, a
/// labelled span (plus a secondary one for duplicates and conflicts), a help text, and further
/// problems found in the same file as related diagnostics.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{file}:{line}:{column}: {message}")]
#[diagnostic(code(aether::manifest::invalid))]
pub struct SourceError {
    file: String,
    line: usize,
    column: usize,
    message: String,
    #[source_code]
    source_code: NamedSource<String>,
    #[label(collection)]
    labels: Vec<LabeledSpan>,
    #[help]
    help: Option<String>,
    #[related]
    related: Vec<SourceError>,
}

impl SourceError {
    /// Name of the file, as given to [`crate::parse`].
    pub fn file(&self) -> &str {
        &self.file
    }

    /// 1-based line of the offending text.
    pub fn line(&self) -> usize {
        self.line
    }

    /// 1-based column (in characters) of the offending text.
    pub fn column(&self) -> usize {
        self.column
    }

    /// What is wrong, without the location prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How to fix it, if there is a hint.
    pub fn hint(&self) -> Option<&str> {
        self.help.as_deref()
    }

    /// Further problems found in the same file (validation reports all it finds).
    pub fn others(&self) -> &[SourceError] {
        &self.related
    }
}

/// A secondary label: a span and its text.
pub(crate) struct Secondary {
    pub span: Range<usize>,
    pub label: String,
}

/// Builds located errors for one source text.
pub(crate) struct Reporter<'a> {
    pub file: &'a str,
    pub source: &'a str,
}

impl Reporter<'_> {
    /// 1-based line and character column of byte offset `at`.
    fn line_col(&self, at: usize) -> (usize, usize) {
        let mut at = at.min(self.source.len());
        while !self.source.is_char_boundary(at) {
            at -= 1;
        }
        let before = &self.source[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn clamp(&self, span: Range<usize>) -> Range<usize> {
        let start = span.start.min(self.source.len());
        let end = span.end.clamp(start, self.source.len());
        start..end
    }

    /// One located error.
    pub fn error(
        &self,
        span: Range<usize>,
        message: String,
        label: String,
        help: Option<String>,
        secondary: Option<Secondary>,
    ) -> SourceError {
        let span = self.clamp(span);
        let (line, column) = self.line_col(span.start);
        let mut labels = vec![LabeledSpan::new_primary_with_span(
            Some(label),
            SourceSpan::from(span.start..span.end),
        )];
        if let Some(s) = secondary {
            let s_span = self.clamp(s.span);
            labels.push(LabeledSpan::new_with_span(
                Some(s.label),
                SourceSpan::from(s_span.start..s_span.end),
            ));
        }
        SourceError {
            file: self.file.to_string(),
            line,
            column,
            message,
            source_code: NamedSource::new(self.file, self.source.to_string()).with_language("toml"),
            labels,
            help,
            related: Vec::new(),
        }
    }

    /// Wraps the first error (with the rest as related diagnostics) into a [`ManifestError`].
    pub fn finish(mut first: SourceError, rest: Vec<SourceError>) -> ManifestError {
        first.related = rest;
        ManifestError::Invalid(Box::new(first))
    }
}
