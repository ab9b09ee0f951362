//! Plugin files watched for changes: when a watched file is written, or replaced by a rename
//! (as editors and deploy tools do: write a temporary file, then rename it over the old
//! one), and then stays quiet for [`SETTLE`], the listener it belongs to is told to swap.
//!
//! Each file's folder is watched rather than the file: a rename replaces the file's inode,
//! and a watch on the old inode would hear nothing more.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long a plugin file must stay quiet after a change before it is loaded: a deploy that
/// writes in several steps is loaded once, complete.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Watches plugin files until dropped.
pub struct PluginWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PluginWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One watched file: its listener, the path to load, and how events name it.
struct Watched {
    listener: String,
    path: PathBuf,
    folder: PathBuf,
    name: std::ffi::OsString,
}

/// Watch each `(listener, file)`; once a file has changed and settled, call
/// `changed(listener, file)` (one file at a time, in the order given).
///
/// # Errors
///
/// The OS refused a watch (a file's folder does not exist, or the inotify limit is reached).
pub(crate) fn watch<F, Fut>(
    files: Vec<(String, PathBuf)>,
    changed: F,
) -> Result<PluginWatch, notify::Error>
where
    F: Fn(String, PathBuf) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut watched = Vec::new();
    for (listener, path) in files {
        let folder = match path.parent() {
            Some(folder) if !folder.as_os_str().is_empty() => folder.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some(name) = path.file_name().map(ToOwned::to_owned) else {
            continue;
        };
        // Events name files under the folder as it was watched: canonical, so that `./x`,
        // `x` and `/abs/x` all match.
        let folder = folder.canonicalize().map_err(notify::Error::io)?;
        watched.push(Watched {
            listener,
            path,
            folder,
            name,
        });
    }
    let (events, mut heard) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for path in event.paths {
                // The receiver is gone only once the watch is dropped.
                let _ = events.send(path);
            }
        }
    })?;
    let folders: BTreeSet<&Path> = watched.iter().map(|w| w.folder.as_path()).collect();
    for folder in folders {
        watcher.watch(folder, RecursiveMode::NonRecursive)?;
    }
    let watched = Arc::new(watched);
    let task = tokio::spawn(async move {
        let which = |path: &Path| -> Vec<usize> {
            watched
                .iter()
                .enumerate()
                .filter(|(_, w)| {
                    path.parent() == Some(w.folder.as_path()) && path.file_name() == Some(&w.name)
                })
                .map(|(index, _)| index)
                .collect()
        };
        while let Some(path) = heard.recv().await {
            let mut changed_files: BTreeSet<usize> = which(&path).into_iter().collect();
            if changed_files.is_empty() {
                continue;
            }
            // Settle: gather every change until the folder has been quiet for SETTLE.
            loop {
                match tokio::time::timeout(SETTLE, heard.recv()).await {
                    Ok(Some(path)) => changed_files.extend(which(&path)),
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            for index in changed_files {
                let file = &watched[index];
                changed(file.listener.clone(), file.path.clone()).await;
            }
        }
    });
    Ok(PluginWatch {
        _watcher: watcher,
        task,
    })
}
