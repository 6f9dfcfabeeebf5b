//! Where a branch started with `--grade-controller FILE` keeps its [`ControllerGrade`] and
//! writes it: text, or JSON when FILE ends in `.json`, written to a temporary file beside FILE
//! and renamed over it, so a reader never sees half a card. A file that cannot be written is a
//! warning naming it (once; later failures are logged at debug): the branch runs on.

use std::path::{Path, PathBuf};

use super::grading::ControllerGrade;

/// The card and the file it goes to.
#[derive(Debug)]
pub struct GradeFile {
    /// Where the card goes.
    path: PathBuf,
    /// JSON (FILE ends in `.json`) rather than text.
    json: bool,
    /// What the controller did, so far.
    pub grade: ControllerGrade,
    /// A write failed already: the warning is not repeated on every snapshot.
    warned: bool,
}

impl GradeFile {
    /// A card for branch `branch`, written to `path`.
    pub fn new(branch: &str, path: PathBuf) -> Self {
        let json = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
        Self {
            path,
            json,
            grade: ControllerGrade::new(branch),
            warned: false,
        }
    }

    /// Writes the card as it stands (temporary file, then rename).
    pub fn write(&mut self) {
        let mut text = if self.json {
            self.grade.to_json()
        } else {
            self.grade.to_text()
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if let Err(err) = write_atomically(&self.path, &text) {
            if self.warned {
                log::debug!(
                    "cannot write the controller's report card to {}: {err}",
                    self.path.display()
                );
            } else {
                log::warn!(
                    "cannot write the controller's report card to {}: {err}; the branch runs on",
                    self.path.display()
                );
                self.warned = true;
            }
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}
