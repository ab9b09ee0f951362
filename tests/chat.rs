//! The chat plugin, the example users copy first, against a hostile member: names cannot be
//! taken twice, control characters never reach another member's terminal raw, and an
//! overlong command is refused whole.

mod support;

use std::time::Duration;

use support::{ChatClient, TestServer, join_chat, read_line};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Client = ChatClient;

async fn say(client: &mut Client, bytes: &[u8]) -> anyhow::Result<()> {
    client.get_mut().write_all(bytes).await?;
    Ok(())
}

/// Nothing more arrives within a short while.
async fn silent(client: &mut Client) -> anyhow::Result<()> {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(300), client.read(&mut byte)).await;
    anyhow::ensure!(read.is_err(), "unexpected output: {read:?} {byte:?}");
    Ok(())
}

#[tokio::test]
async fn a_name_in_use_cannot_be_taken() -> anyhow::Result<()> {
    let server = TestServer::start("chat").await?;
    let (mut bob, bob_id) = join_chat(&server).await?;
    let (mut mallory, mallory_id) = join_chat(&server).await?;
    assert_eq!(read_line(&mut bob).await?, format!("* {mallory_id} joined"));
    say(&mut bob, b"/nick bob\n").await?;
    assert_eq!(read_line(&mut bob).await?, "* you are now bob");
    assert_eq!(
        read_line(&mut mallory).await?,
        format!("* {bob_id} is now bob")
    );
    for (attempt, taken) in [("bob", "bob"), ("BOB", "BOB"), (&*bob_id.to_string(), "")] {
        say(&mut mallory, format!("/nick {attempt}\n").as_bytes()).await?;
        let refusal = read_line(&mut mallory).await?;
        assert!(
            refusal.starts_with("* the name") && refusal.contains("is taken"),
            "{attempt}: {refusal} {taken}"
        );
    }
    silent(&mut bob).await?;
    drop((bob, mallory));
    server.shutdown().await
}

#[tokio::test]
async fn control_characters_never_reach_a_terminal_raw() -> anyhow::Result<()> {
    let server = TestServer::start("chat").await?;
    let (mut reader, _) = join_chat(&server).await?;
    let (mut writer, writer_id) = join_chat(&server).await?;
    read_line(&mut reader).await?; // the writer's join
    say(&mut writer, b"hi \x1b]0;pwned\x07 there\n").await?;
    let line = read_line(&mut reader).await?;
    assert!(
        !line.bytes().any(|b| b.is_ascii_control()),
        "raw control bytes relayed: {line:?}"
    );
    assert!(line.starts_with(&format!("{writer_id}: hi ")), "{line}");
    assert!(line.ends_with(" there"), "{line}");
    server.shutdown().await
}

#[tokio::test]
async fn an_overlong_command_is_refused_whole() -> anyhow::Result<()> {
    let server = TestServer::start("chat").await?;
    let (mut reader, _) = join_chat(&server).await?;
    let (mut writer, writer_id) = join_chat(&server).await?;
    read_line(&mut reader).await?; // the writer's join
    let mut command = b"/nick ".to_vec();
    command.extend(std::iter::repeat_n(b'a', 1 << 20));
    command.push(b'\n');
    say(&mut writer, &command).await?;
    let refusal = read_line(&mut writer).await?;
    assert!(
        refusal.contains("command") && refusal.contains("too long"),
        "{refusal}"
    );
    // None of it reached the room as chat text; the writer still chats.
    say(&mut writer, b"after\n").await?;
    assert_eq!(read_line(&mut reader).await?, format!("{writer_id}: after"));
    server.shutdown().await
}
