//! The in-process message backend: a registry of one listener's live connections and a
//! bounded mailbox per connection ([`Mailboxes`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use crate::messages::types::{
    MAX_NAME_BYTES, MailboxCounts, MailboxLimits, Message, MessageError, NameError, Peer,
};
use crate::messages::waits::{MailboxWaits, WaitGraph};

/// The registry of one listener's live connections and their mailboxes. Cloning it is cheap;
/// every clone is the same registry.
///
/// Every [`Server`](crate::Server) owns one [`Mailboxes`] registry, so messages never cross
/// listeners. A connection registers when it is accepted and its mailbox is removed when it
/// ends. Sending copies nothing but a reference-counted payload into the receiver's queue.
///
/// Flow control: a connection that sends to a mailbox more than half full stops reading its
/// client until that mailbox is back under a quarter; a guest's send to a *full* mailbox
/// waits for room (its call timeout leaves the wait out), unless the wait would close a
/// cycle of waits. Sends from the host program ([`Mailboxes::send`],
/// [`Mailboxes::broadcast`]) never wait.
///
/// Messages from one sender to one receiver keep their order (one FIFO queue per receiver,
/// filled by one sender call at a time), and a connection never goes on with a gap: when a
/// message cannot be queued (its [`MailboxLimits`] reached and no wait possible), the message
/// is refused ([`MessageError::MailboxFull`]), the mailbox is closed to new messages, and its
/// connection ends with `close(limit("mailbox full"))` once it has handled what the mailbox
/// holds. A receiver either gets every message sent to it, in order, or is disconnected, with
/// a bound on memory instead of an unbounded process mailbox.
#[derive(Clone)]
pub struct Mailboxes {
    inner: Arc<Registry>,
}

struct Registry {
    limits: MailboxLimits,
    water: Water,
    entries: Mutex<HashMap<u64, Entry>>,
    /// Set at shutdown: every mailbox is closed and new ones are born closed.
    closed: AtomicBool,
    delivered: AtomicU64,
    /// Messages refused, by [`MessageError::index`].
    refused: [AtomicU64; MessageError::ALL.len()],
    /// Mailboxes that overflowed (not counting those closed by the shutdown).
    overflowed: AtomicU64,
    /// Sends that waited for room in a full mailbox.
    waited: AtomicU64,
    /// Who waits for room in whose mailbox.
    waits: WaitGraph,
}

struct Entry {
    inbox: Arc<Inbox>,
    name: Option<String>,
}

/// One connection's queue, shared by the registry (senders) and its [`Mailbox`] (receiver).
///
/// A `VecDeque` behind a mutex rather than a tokio channel: an idle connection's empty queue
/// allocates nothing, where a bounded channel allocates its first block of 32 slots up front
/// (~1.8 KiB per connection). The one receiver's waker sits in an `AtomicWaker` rather than
/// a `Notify`, whose waiter list costs a lock to enter and another to leave on every turn of
/// the connection's loop (~350 instructions per round trip).
///
/// In declaration order (`repr(C)`): what the receiver reads on every event of its
/// connection — `held_back`, `receiver` and `news` (and the queue's lock when there is news)
/// — comes first, in the allocation's first 64 bytes with the `Arc`'s counts, so that the
/// look usually costs one cache line (the connections are served in turn, so it is rarely
/// in the cache).
#[repr(C)]
struct Inbox {
    /// How many congested mailboxes this connection, as a sender, waits on before it reads its
    /// client again: its flow control.
    held_back: AtomicUsize,
    /// The receiving task, woken by any change it must see: a message, or the close.
    receiver: AtomicWaker,
    /// Whether the receiver may find something: a message, a move request or the close. Set
    /// under the queue's lock by whatever adds one; cleared under it by the receiver when it
    /// finds none. A receiver that reads `false` after registering its waker need not take
    /// the lock: whoever adds something next finds the queue empty and wakes it.
    news: AtomicBool,
    /// Set when the mailbox overflows, to interrupt a receiver blocked on its client (woken
    /// through `receiver`).
    overflowed: AtomicBool,
    queue: Mutex<Queue>,
    /// This connection's task, waiting to read its client again.
    unheld: AtomicWaker,
    /// Senders waiting for room in this mailbox, woken as it drains below its high-water
    /// mark (a `Notify`: there may be many, and they are rare).
    room: tokio::sync::Notify,
}

/// The marks of a congested mailbox, from the listener's mailbox limits: past half a mailbox
/// (bytes or messages) it is congested, and the connections that send to it stop reading
/// their clients; back under a quarter, they go on.
#[derive(Debug, Clone, Copy)]
struct Water {
    high: (usize, usize),
    low: (usize, usize),
}

impl Water {
    fn of(limits: MailboxLimits) -> Self {
        let high = ((limits.bytes / 2).max(1), (limits.messages / 2).max(1));
        Self {
            high,
            low: (high.0 / 2, high.1 / 2),
        }
    }
}

struct Queue {
    messages: VecDeque<Message>,
    bytes: usize,
    /// Set once the mailbox takes nothing more (it overflowed, or the server is shutting
    /// down): the receiver handles what is queued, then sees the end of its mailbox.
    closed: bool,
    water: Water,
    /// The senders held back while this mailbox is congested.
    holding_back: Vec<Arc<Inbox>>,
    /// Senders waiting in a call for room in this mailbox.
    waiting_senders: usize,
    /// The receiver has ended: nothing is delivered here any more.
    gone: bool,
    /// The connection's plugin version asks it to move to the current one.
    move_request: Option<MoveRequest>,
}

/// A plugin version asking its connection to move to the listener's current version, which
/// the connection does between two calls (see [`Mailboxes::request_move`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum MoveRequest {
    /// Move if the plugin can hand its state off; otherwise stay on this version.
    IfPossible,
    /// The version's drain deadline: move, or end with `close(upgrade)`.
    OrEnd,
    /// The version's drain deadline where moves are off (`handoff = "never"`): end with
    /// `close(upgrade)`.
    End,
}

/// What a connection's mailbox has for it next.
#[derive(Debug)]
pub(crate) enum Received {
    Message(Message),
    /// Its version asks it to move ([`Mailboxes::request_move`]).
    Move(MoveRequest),
    /// The mailbox is closed (it overflowed, or the server is shutting down) and empty.
    Closed,
}

/// What a broadcast's first pass over the mailboxes did.
struct Offered {
    /// Mailboxes that took the message.
    delivered: usize,
    /// Those that were full (or closed), by connection id.
    full: Vec<(u64, Arc<Inbox>)>,
    /// The sending connection's inbox (none for the host program).
    sender: Option<Arc<Inbox>>,
}

/// What became of a message offered to a mailbox.
enum Offer {
    Queued,
    /// It does not fit now.
    Full,
    /// The mailbox takes nothing more (it overflowed, or the server is shutting down).
    Closed,
    /// The receiver has ended.
    Gone,
}

/// Queues grown past this many slots by a burst give their memory back once drained.
const KEPT_QUEUE_SLOTS: usize = 64;

impl Inbox {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Every critical section is a few field updates that cannot panic half-way.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the receiver may find something in `queue` (this inbox's, locked): keep
    /// [`Inbox::news`] up to date after a change to it.
    fn publish(&self, queue: &Queue) {
        self.news.store(queue.has_news(), Ordering::Release);
    }

    /// Whether the receiver must look under the lock: [`Inbox::news`], read after its waker
    /// is registered.
    fn may_have_news(&self) -> bool {
        self.news.load(Ordering::Acquire)
    }

    fn close(&self) {
        let mut queue = self.queue();
        queue.closed = true;
        self.publish(&queue);
        drop(queue);
        self.receiver.wake();
        self.room.notify_waiters();
    }

    /// Wait until `len` more bytes fit (or the mailbox closes).
    async fn room_for(&self, len: usize, limits: MailboxLimits) {
        self.queue().waiting_senders += 1;
        let _counted = WaitingSender(self);
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so that a drain after the look wakes this wait.
            notified.as_mut().enable();
            if self.queue().takes(len, limits) {
                return;
            }
            notified.await;
        }
    }
}

/// One sender counted in [`Queue::waiting_senders`] while it waits (and if its call is
/// dropped mid-wait).
struct WaitingSender<'a>(&'a Inbox);

impl Drop for WaitingSender<'_> {
    fn drop(&mut self) {
        self.0.queue().waiting_senders -= 1;
    }
}

impl Queue {
    fn new(closed: bool, water: Water) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            closed,
            water,
            holding_back: Vec::new(),
            waiting_senders: 0,
            gone: false,
            move_request: None,
        }
    }

    /// Whether the receiver has something to see: a message, a move request, or the close.
    fn has_news(&self) -> bool {
        self.closed || self.move_request.is_some() || !self.messages.is_empty()
    }

    /// Whether a message of `len` bytes would be queued now (or the mailbox is closed, which
    /// no wait can change).
    fn takes(&self, len: usize, limits: MailboxLimits) -> bool {
        self.closed || (self.messages.len() < limits.messages && self.bytes + len <= limits.bytes)
    }

    /// Whether senders wait for room that this mailbox, drained below its high-water mark,
    /// now has.
    fn has_room_for_waiters(&self) -> bool {
        self.waiting_senders > 0
            && self.bytes <= self.water.high.0
            && self.messages.len() <= self.water.high.1
    }

    fn pop(&mut self) -> Option<Message> {
        let message = self.messages.pop_front()?;
        self.bytes -= message.payload.len();
        if self.messages.is_empty() && self.messages.capacity() > KEPT_QUEUE_SLOTS {
            self.messages = VecDeque::new();
        }
        if !self.holding_back.is_empty()
            && self.bytes <= self.water.low.0
            && self.messages.len() <= self.water.low.1
        {
            self.release_senders();
        }
        Some(message)
    }

    /// Past the high-water mark, `sender` (once per congestion) waits for this mailbox to
    /// drain before it reads its client again.
    fn hold_back(&mut self, sender: &Arc<Inbox>) {
        let congested = self.bytes > self.water.high.0 || self.messages.len() > self.water.high.1;
        if congested
            && !self
                .holding_back
                .iter()
                .any(|held| Arc::ptr_eq(held, sender))
        {
            sender.held_back.fetch_add(1, Ordering::AcqRel);
            self.holding_back.push(Arc::clone(sender));
        }
    }

    /// The senders held back by this mailbox go on.
    fn release_senders(&mut self) {
        for sender in self.holding_back.drain(..) {
            if sender.held_back.fetch_sub(1, Ordering::AcqRel) == 1 {
                sender.unheld.wake();
            }
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // The receiver is gone: it holds nobody back any more.
        self.release_senders();
    }
}

impl Mailboxes {
    /// An empty registry whose mailboxes hold at most `limits`.
    #[must_use]
    pub fn new(limits: MailboxLimits) -> Self {
        let limits = MailboxLimits {
            messages: limits.messages.max(1),
            bytes: limits.bytes,
        };
        Self {
            inner: Arc::new(Registry {
                limits,
                water: Water::of(limits),
                entries: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                delivered: AtomicU64::new(0),
                refused: Default::default(),
                overflowed: AtomicU64::new(0),
                waited: AtomicU64::new(0),
                waits: WaitGraph::default(),
            }),
        }
    }

    /// Give connection `id` a mailbox. The returned receiver removes it when dropped.
    pub(crate) fn register(&self, id: u64) -> Mailbox {
        let mut entries = self.entries();
        // Checked under the lock `close_all` takes, so no mailbox is left open at shutdown.
        let closed = self.inner.closed.load(Ordering::Acquire);
        let inbox = Arc::new(Inbox {
            held_back: AtomicUsize::new(0),
            receiver: AtomicWaker::new(),
            news: AtomicBool::new(closed),
            overflowed: AtomicBool::new(false),
            queue: Mutex::new(Queue::new(closed, self.inner.water)),
            unheld: AtomicWaker::new(),
            room: tokio::sync::Notify::new(),
        });
        let entry = Entry {
            inbox: Arc::clone(&inbox),
            name: None,
        };
        entries.insert(id, entry);
        Mailbox {
            id,
            inbox,
            registry: self.clone(),
            paused: false,
        }
    }

    /// Ask connection `id` to move to its listener's current plugin version: its next
    /// [`Mailbox::recv_or_move`] says so, ahead of the messages waiting (which stay, for
    /// whichever version it runs next). A stronger request replaces a weaker one.
    pub(crate) fn request_move(&self, id: u64, request: MoveRequest) {
        let Some(inbox) = self
            .entries()
            .get(&id)
            .map(|entry| Arc::clone(&entry.inbox))
        else {
            return;
        };
        let mut queue = inbox.queue();
        queue.move_request = queue.move_request.max(Some(request));
        inbox.publish(&queue);
        drop(queue);
        inbox.receiver.wake();
    }

    /// Close every mailbox, now and to come: each connection handles what its mailbox holds,
    /// then sees its end (the server is shutting down).
    pub(crate) fn close_all(&self) {
        let entries = self.entries();
        self.inner.closed.store(true, Ordering::Release);
        for entry in entries.values() {
            entry.inbox.close();
        }
    }

    /// Queue `payload` for connection `to`, as sent by `from` (the host program, say). Never
    /// waits: a full mailbox refuses the message and closes (see the type's docs).
    ///
    /// # Errors
    ///
    /// A [`MessageError`] says why nothing was queued.
    pub fn send(&self, from: u64, to: u64, payload: Bytes) -> Result<(), MessageError> {
        if payload.len() > self.inner.limits.bytes {
            return Err(self.refuse(MessageError::TooLarge));
        }
        let (inbox, sender) = self.route(from, to)?;
        match self.offer(&inbox, from, sender.as_ref(), &payload) {
            Offer::Queued => Ok(()),
            Offer::Gone => Err(self.refuse(MessageError::NoSuchConnection)),
            Offer::Full | Offer::Closed => Err(self.overflow(&inbox)),
        }
    }

    /// Queue `payload` for every connection of the listener except `from`; returns how many
    /// mailboxes took it. Never waits, as [`Mailboxes::send`].
    pub fn broadcast(&self, from: u64, payload: &Bytes) -> usize {
        if payload.len() > self.inner.limits.bytes {
            self.refuse(MessageError::TooLarge);
            return 0;
        }
        let offered = self.offer_to_all(from, payload);
        for (_, inbox) in &offered.full {
            self.overflow(inbox);
        }
        offered.delivered
    }

    /// [`Mailboxes::send`] from a connection's guest: where the receiver's mailbox is full,
    /// the call waits for room (its call timeout does not count the wait, `waits` records
    /// it) instead of refusing — unless waiting would close a cycle of waits, and then the
    /// receiver overflows as with `send`.
    pub(crate) async fn send_waiting(
        &self,
        from: u64,
        to: u64,
        payload: Bytes,
        waits: &MailboxWaits,
    ) -> Result<(), MessageError> {
        if payload.len() > self.inner.limits.bytes {
            return Err(self.refuse(MessageError::TooLarge));
        }
        let (inbox, sender) = self.route(from, to)?;
        let sent = self
            .deliver_waiting(&inbox, from, to, sender.as_ref(), &payload, waits)
            .await;
        match sent {
            Err(MessageError::NoSuchConnection) => Err(self.refuse(MessageError::NoSuchConnection)),
            sent => sent,
        }
    }

    /// [`Mailboxes::broadcast`] from a connection's guest, waiting for room as
    /// [`Mailboxes::send_waiting`] does, one receiver after the other.
    pub(crate) async fn broadcast_waiting(
        &self,
        from: u64,
        payload: Bytes,
        waits: &MailboxWaits,
    ) -> usize {
        if payload.len() > self.inner.limits.bytes {
            self.refuse(MessageError::TooLarge);
            return 0;
        }
        let offered = self.offer_to_all(from, &payload);
        let mut delivered = offered.delivered;
        // Rare: only the mailboxes that were full are waited on, one after the other.
        for (to, inbox) in &offered.full {
            let sender = offered.sender.as_ref();
            let sent = self.deliver_waiting(inbox, from, *to, sender, &payload, waits);
            delivered += usize::from(sent.await.is_ok());
        }
        delivered
    }

    /// The mailbox of `to`, and the sender's own inbox (none for the host program).
    fn route(&self, from: u64, to: u64) -> Result<(Arc<Inbox>, Option<Arc<Inbox>>), MessageError> {
        let entries = self.entries();
        let Some(inbox) = entries.get(&to) else {
            return Err(self.refuse(MessageError::NoSuchConnection));
        };
        let sender = entries.get(&from).map(|sender| Arc::clone(&sender.inbox));
        Ok((Arc::clone(&inbox.inbox), sender))
    }

    /// Offer `payload` to every mailbox but `from`'s, under the registry's lock (a broadcast
    /// reaches the connections open at one moment): how many took it, and those that were
    /// full, for the caller to wait on or overflow.
    fn offer_to_all(&self, from: u64, payload: &Bytes) -> Offered {
        let entries = self.entries();
        let sender = entries.get(&from).map(|sender| Arc::clone(&sender.inbox));
        let mut offered = Offered {
            delivered: 0,
            full: Vec::new(),
            sender: None,
        };
        for (id, entry) in entries.iter().filter(|(id, _)| **id != from) {
            match self.offer(&entry.inbox, from, sender.as_ref(), payload) {
                Offer::Queued => offered.delivered += 1,
                Offer::Gone => {}
                Offer::Full | Offer::Closed => offered.full.push((*id, Arc::clone(&entry.inbox))),
            }
        }
        offered.sender = sender;
        offered
    }

    /// The open connections of the listener, in id order.
    #[must_use]
    pub fn peers(&self) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self
            .entries()
            .iter()
            .map(|(id, entry)| Peer {
                id: *id,
                name: entry.name.clone(),
            })
            .collect();
        peers.sort_by_key(|peer| peer.id);
        peers
    }

    /// How many connections have a mailbox now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no connection has a mailbox.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Set the name [`Mailboxes::peers`] shows for connection `id` (cut to
    /// [`MAX_NAME_BYTES`]).
    pub(crate) fn set_name(&self, id: u64, name: &str) {
        if let Some(entry) = self.entries().get_mut(&id) {
            entry.name = Some(truncate(name, MAX_NAME_BYTES).to_string());
        }
    }

    /// Give connection `id` the name `name` unless another connection has it (ignoring ASCII
    /// case) or it is another live connection's id: looked up and set under one lock, so two
    /// connections can never hold one name.
    ///
    /// # Errors
    ///
    /// [`NameError::Taken`], or [`NameError::Invalid`] for an empty or overlong name.
    pub fn claim_name(&self, id: u64, name: &str) -> Result<(), NameError> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(NameError::Invalid);
        }
        let mut entries = self.entries();
        let is_other_id = name
            .parse::<u64>()
            .is_ok_and(|other| other != id && entries.contains_key(&other));
        let taken = entries.iter().any(|(other, entry)| {
            *other != id
                && entry
                    .name
                    .as_deref()
                    .is_some_and(|held| held.eq_ignore_ascii_case(name))
        });
        if is_other_id || taken {
            return Err(NameError::Taken);
        }
        if let Some(entry) = entries.get_mut(&id) {
            entry.name = Some(name.to_string());
        }
        Ok(())
    }

    /// Messages queued into a mailbox so far (a broadcast counts once per receiver).
    #[must_use]
    pub fn delivered(&self) -> u64 {
        self.inner.delivered.load(Ordering::Relaxed)
    }

    /// Messages refused so far, for any reason ([`Mailboxes::counts`] has them by reason).
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.counts().refused_total()
    }

    /// Mailboxes that have overflowed so far: each refused a message, closed, and ended its
    /// connection. Mailboxes closed by the shutdown are not counted.
    #[must_use]
    pub fn overflowed(&self) -> u64 {
        self.inner.overflowed.load(Ordering::Relaxed)
    }

    /// Everything the listener's mailboxes have counted so far, for metrics.
    #[must_use]
    pub fn counts(&self) -> MailboxCounts {
        let inner = &self.inner;
        MailboxCounts::new(
            inner.delivered.load(Ordering::Relaxed),
            inner.refused.each_ref().map(|n| n.load(Ordering::Relaxed)),
            inner.overflowed.load(Ordering::Relaxed),
            inner.waited.load(Ordering::Relaxed),
        )
    }

    /// Times a guest's send found a mailbox full and waited for room (flow control).
    #[must_use]
    pub fn waited(&self) -> u64 {
        self.inner.waited.load(Ordering::Relaxed)
    }

    /// Offer `payload` to `inbox` until it is queued: while the mailbox is full, wait for
    /// room where the wait graph allows it; otherwise overflow the mailbox.
    async fn deliver_waiting(
        &self,
        inbox: &Arc<Inbox>,
        from: u64,
        to: u64,
        sender: Option<&Arc<Inbox>>,
        payload: &Bytes,
        waits: &MailboxWaits,
    ) -> Result<(), MessageError> {
        loop {
            match self.offer(inbox, from, sender, payload) {
                Offer::Queued => return Ok(()),
                // Not counted here: a broadcast does not count a receiver that left.
                Offer::Gone => return Err(MessageError::NoSuchConnection),
                Offer::Closed => return Err(self.overflow(inbox)),
                Offer::Full => {}
            }
            let edge = sender.and_then(|_| self.inner.waits.begin(from, to));
            let Some(_edge) = edge else {
                return Err(self.overflow(inbox));
            };
            self.inner.waited.fetch_add(1, Ordering::Relaxed);
            let _waiting = waits.begin();
            inbox.room_for(payload.len(), self.inner.limits).await;
        }
    }

    /// Queue `payload` in `inbox` if it fits; `sender`, the sending connection's inbox (none
    /// for the host program), is held back if the mailbox is congested.
    fn offer(
        &self,
        inbox: &Inbox,
        from: u64,
        sender: Option<&Arc<Inbox>>,
        payload: &Bytes,
    ) -> Offer {
        let mut queue = inbox.queue();
        if queue.gone {
            return Offer::Gone;
        }
        if queue.closed {
            return Offer::Closed;
        }
        let limits = &self.inner.limits;
        if queue.messages.len() >= limits.messages || queue.bytes + payload.len() > limits.bytes {
            return Offer::Full;
        }
        queue.bytes += payload.len();
        // The receiver waits only after finding its queue empty (under this lock), so only
        // the message that fills an empty queue needs to wake it.
        let wake = queue.messages.is_empty();
        queue.messages.push_back(Message {
            from,
            payload: payload.clone(),
        });
        if let Some(sender) = sender {
            queue.hold_back(sender);
        }
        inbox.publish(&queue);
        drop(queue);
        if wake {
            inbox.receiver.wake();
        }
        self.inner.delivered.fetch_add(1, Ordering::Relaxed);
        Offer::Queued
    }

    /// A message did not fit in `inbox` (over the byte limit, over the message limit, or
    /// closed: to the sender all three are a mailbox that takes nothing more). The receiver
    /// has now missed a message, so its mailbox closes and its connection ends rather than
    /// go on with a gap — unless the server is shutting down, which ends every connection
    /// anyway.
    fn overflow(&self, inbox: &Inbox) -> MessageError {
        if !self.inner.closed.load(Ordering::Acquire) {
            let mut queue = inbox.queue();
            let was_closed = std::mem::replace(&mut queue.closed, true);
            inbox.publish(&queue);
            drop(queue);
            if !was_closed {
                self.inner.overflowed.fetch_add(1, Ordering::Relaxed);
            }
            inbox.overflowed.store(true, Ordering::Release);
            inbox.receiver.wake();
            inbox.room.notify_waiters();
        }
        self.refuse(MessageError::MailboxFull)
    }

    /// Count a message refused for `reason`, and return the reason.
    fn refuse(&self, reason: MessageError) -> MessageError {
        self.inner.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
        reason
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated: every critical
        // section is a single map operation.
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Mailboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailboxes")
            .field("limits", &self.inner.limits)
            .field("connections", &self.len())
            .finish()
    }
}

/// The receiving end of one connection's mailbox; leaving the registry when dropped.
pub(crate) struct Mailbox {
    id: u64,
    inbox: Arc<Inbox>,
    registry: Mailboxes,
    /// Past the high-water mark of what it sent, until back under the low one.
    paused: bool,
}

impl Mailbox {
    /// The next message, waiting for one; `None` once the mailbox is closed (it overflowed,
    /// or the server is shutting down) and empty.
    ///
    /// Cancel-safe: a message is taken only by the poll that returns it.
    #[cfg(test)]
    pub(crate) async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    #[cfg(test)]
    fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Message>> {
        // Registered before looking: a message or close after the look wakes this waker.
        self.inbox.receiver.register(cx.waker());
        if !self.inbox.may_have_news() {
            return Poll::Pending;
        }
        let queue = self.inbox.queue();
        self.pop_from(queue)
    }

    /// The next message from `queue` (this mailbox's, locked), or `None` if it is closed and
    /// empty.
    fn pop_from(&self, mut queue: MutexGuard<'_, Queue>) -> Poll<Option<Message>> {
        // One lock for both checks: messages queued before the close come first.
        let message = queue.pop();
        self.inbox.publish(&queue);
        match message {
            Some(message) => {
                let room = queue.has_room_for_waiters();
                drop(queue);
                if room {
                    self.inbox.room.notify_waiters();
                }
                Poll::Ready(Some(message))
            }
            None if queue.closed => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// A request to move to the current plugin version, if one is waiting and the mailbox is
    /// open, else the next message (waiting for one), or [`Received::Closed`].
    ///
    /// Cancel-safe, as [`Mailbox::recv`].
    pub(crate) async fn recv_or_move(&mut self) -> Received {
        std::future::poll_fn(|cx| {
            // Registered before looking: a message, request or close after the look wakes
            // this waker.
            self.inbox.receiver.register(cx.waker());
            if !self.inbox.may_have_news() {
                return Poll::Pending;
            }
            let mut queue = self.inbox.queue();
            if !queue.closed
                && let Some(request) = queue.move_request.take()
            {
                self.inbox.publish(&queue);
                return Poll::Ready(Received::Move(request));
            }
            self.pop_from(queue)
                .map(|message| message.map_or(Received::Closed, Received::Message))
        })
        .await
    }

    /// The next message if one is waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Message> {
        if !self.inbox.may_have_news() {
            return None;
        }
        let mut queue = self.inbox.queue();
        let message = queue.pop();
        self.inbox.publish(&queue);
        let room = queue.has_room_for_waiters();
        drop(queue);
        if room {
            self.inbox.room.notify_waiters();
        }
        message
    }

    /// Whether the connection may read its client: not while a mailbox it sent to is
    /// congested (past half full), until that mailbox is back under a quarter. A flood then
    /// slows its sender instead of filling its receivers' mailboxes.
    pub(crate) fn may_read(&mut self) -> bool {
        self.paused = self.inbox.held_back.load(Ordering::Acquire) > 0;
        !self.paused
    }

    /// Whether the connection is holding back from reading its client (see
    /// [`Mailbox::may_read`]).
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Wait until no congested mailbox holds the connection back (a future that does not
    /// borrow the mailbox, so that it can race [`Mailbox::recv`]).
    pub(crate) fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let inbox = Arc::clone(&self.inbox);
        std::future::poll_fn(move |cx| {
            inbox.unheld.register(cx.waker());
            if inbox.held_back.load(Ordering::Acquire) == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Resolves once the mailbox has overflowed: a receiver blocked writing to a client that
    /// does not read waits on it too, so that it ends at once rather than at its write
    /// timeout.
    pub(crate) async fn overflowed(&self) {
        std::future::poll_fn(|cx| {
            // Registered before looking, as in `recv_or_move`: an overflow after the look wakes it.
            self.inbox.receiver.register(cx.waker());
            if self.is_overflowed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Whether the mailbox has overflowed.
    pub(crate) fn is_overflowed(&self) -> bool {
        self.inbox.overflowed.load(Ordering::Acquire)
    }

    /// Leave the registry now: later sends to this connection fail with `NoSuchConnection`.
    /// Queued messages are dropped with the mailbox.
    pub(crate) fn unregister(&self) {
        self.registry.entries().remove(&self.id);
        let mut queue = self.inbox.queue();
        queue.gone = true;
        queue.closed = true;
        self.inbox.publish(&queue);
        drop(queue);
        // Senders waiting for room here go on: the receiver has ended.
        self.inbox.room.notify_waiters();
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.unregister();
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Poll `future` once.
    async fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        let mut future = Some(future);
        std::future::poll_fn(|cx| {
            let polled = future
                .as_mut()
                .map_or(Poll::Pending, |f| f.as_mut().poll(cx));
            Poll::Ready(polled)
        })
        .await
    }

    fn registry(messages: usize, bytes: usize) -> Mailboxes {
        Mailboxes::new(MailboxLimits { messages, bytes })
    }

    #[tokio::test]
    async fn messages_from_one_sender_arrive_in_order() {
        let mailboxes = registry(16, 1 << 10);
        let mut inbox = mailboxes.register(2);
        for n in 0..10u8 {
            assert_eq!(mailboxes.send(1, 2, Bytes::from(vec![n])), Ok(()));
        }
        for n in 0..10u8 {
            let message = inbox.recv().await.expect("a message");
            assert_eq!((message.from, message.payload.as_ref()), (1, &[n][..]));
        }
    }

    #[tokio::test]
    async fn a_guest_send_to_a_full_mailbox_waits_for_room_and_keeps_the_order() {
        let mailboxes = registry(2, 1 << 10);
        let _sender = mailboxes.register(1);
        let mut inbox = mailboxes.register(2);
        let waits = MailboxWaits::default();
        for payload in ["a", "b"] {
            assert_eq!(mailboxes.send(1, 2, Bytes::from(payload)), Ok(()));
        }
        let third = mailboxes.send_waiting(1, 2, Bytes::from("c"), &waits);
        let mut third = std::pin::pin!(third);
        assert!(
            poll_once(third.as_mut()).await.is_pending(),
            "waits while full"
        );
        assert_eq!(mailboxes.waited(), 1);
        let first = inbox.recv().await.map(|m| m.payload);
        assert_eq!(first, Some(Bytes::from("a")));
        assert_eq!(third.await, Ok(()), "room once drained");
        for expected in ["b", "c"] {
            let next = inbox.recv().await.map(|m| m.payload);
            assert_eq!(next, Some(Bytes::from(expected)));
        }
        assert_eq!(mailboxes.refused(), 0);
        assert!(!inbox.is_overflowed());
    }

    #[tokio::test]
    async fn two_guests_never_wait_on_each_other() {
        let mailboxes = registry(1, 1 << 10);
        let one = mailboxes.register(1);
        let two = mailboxes.register(2);
        let waits = [MailboxWaits::default(), MailboxWaits::default()];
        assert_eq!(mailboxes.send(9, 1, Bytes::from("x")), Ok(()));
        assert_eq!(mailboxes.send(9, 2, Bytes::from("y")), Ok(()));
        let one_to_two = mailboxes.send_waiting(1, 2, Bytes::from("1"), &waits[0]);
        let mut one_to_two = std::pin::pin!(one_to_two);
        assert!(poll_once(one_to_two.as_mut()).await.is_pending());
        // 2 waiting on 1, which waits on 2, would wait forever: 1's mailbox overflows.
        let two_to_one = mailboxes
            .send_waiting(2, 1, Bytes::from("2"), &waits[1])
            .await;
        assert_eq!(two_to_one, Err(MessageError::MailboxFull));
        assert!(one.is_overflowed());
        assert!(!two.is_overflowed());
    }

    #[tokio::test]
    async fn a_receiver_that_ends_releases_its_waiting_senders() {
        let mailboxes = registry(1, 1 << 10);
        let _sender = mailboxes.register(1);
        let receiver = mailboxes.register(2);
        let waits = MailboxWaits::default();
        assert_eq!(mailboxes.send(1, 2, Bytes::from("a")), Ok(()));
        let waiting = mailboxes.broadcast_waiting(1, Bytes::from("b"), &waits);
        let mut waiting = std::pin::pin!(waiting);
        assert!(poll_once(waiting.as_mut()).await.is_pending());
        drop(receiver);
        assert_eq!(waiting.await, 0, "the receiver is gone");
        assert_eq!(mailboxes.refused(), 0);
    }

    #[tokio::test]
    async fn shutdown_releases_waiting_senders() {
        let mailboxes = registry(1, 1 << 10);
        let _sender = mailboxes.register(1);
        let _receiver = mailboxes.register(2);
        let waits = MailboxWaits::default();
        assert_eq!(mailboxes.send(1, 2, Bytes::from("a")), Ok(()));
        let waiting = mailboxes.send_waiting(1, 2, Bytes::from("b"), &waits);
        let mut waiting = std::pin::pin!(waiting);
        assert!(poll_once(waiting.as_mut()).await.is_pending());
        mailboxes.close_all();
        assert_eq!(waiting.await, Err(MessageError::MailboxFull));
        assert_eq!(mailboxes.overflowed(), 0, "shutdown is no overflow");
        assert_eq!(mailboxes.counts().refused(MessageError::MailboxFull), 1);
    }

    #[tokio::test]
    async fn a_full_mailbox_refuses_and_closes_after_what_it_holds() {
        let mailboxes = registry(2, 1 << 10);
        let mut inbox = mailboxes.register(2);
        assert_eq!(mailboxes.send(1, 2, Bytes::from_static(b"a")), Ok(()));
        assert_eq!(mailboxes.send(1, 2, Bytes::from_static(b"b")), Ok(()));
        let third = mailboxes.send(1, 2, Bytes::from_static(b"c"));
        assert_eq!(third, Err(MessageError::MailboxFull));
        assert_eq!((mailboxes.delivered(), mailboxes.refused()), (2, 1));
        assert_eq!(mailboxes.overflowed(), 1);
        assert_eq!(
            inbox.recv().await.map(|m| m.payload),
            Some(Bytes::from("a"))
        );
        assert_eq!(
            inbox.recv().await.map(|m| m.payload),
            Some(Bytes::from("b"))
        );
        assert!(inbox.is_overflowed());
        assert!(inbox.recv().await.is_none(), "closed after what it held");
        let later = mailboxes.send(1, 2, Bytes::from_static(b"d"));
        assert_eq!(later, Err(MessageError::MailboxFull));
        let counts = mailboxes.counts();
        assert_eq!(counts.refused(MessageError::MailboxFull), 2);
        assert_eq!(counts.overflowed, 1, "a mailbox overflows once");
    }

    #[tokio::test]
    async fn the_byte_limit_counts_queued_payloads_and_frees_them_on_delivery() {
        let mailboxes = registry(100, 10);
        let mut inbox = mailboxes.register(2);
        let six = Bytes::from_static(b"123456");
        assert_eq!(mailboxes.send(1, 2, six.clone()), Ok(()));
        assert!(inbox.recv().await.is_some());
        assert_eq!(
            mailboxes.send(1, 2, six.clone()),
            Ok(()),
            "freed on delivery"
        );
        assert_eq!(mailboxes.send(1, 2, six), Err(MessageError::MailboxFull));
        let eleven = Bytes::from_static(b"12345678901");
        assert_eq!(
            mailboxes.send(1, 2, eleven.clone()),
            Err(MessageError::TooLarge)
        );
        assert_eq!(mailboxes.broadcast(1, &eleven), 0);
        assert_eq!(mailboxes.counts().refused(MessageError::TooLarge), 2);
    }

    #[test]
    fn a_connection_that_ended_is_gone() {
        let mailboxes = registry(4, 64);
        let inbox = mailboxes.register(7);
        drop(inbox);
        let sent = mailboxes.send(1, 7, Bytes::from_static(b"hi"));
        assert_eq!(sent, Err(MessageError::NoSuchConnection));
        assert!(mailboxes.is_empty());
        assert_eq!(
            mailboxes.counts().refused(MessageError::NoSuchConnection),
            1
        );
    }

    #[tokio::test]
    async fn broadcast_skips_the_sender_and_full_mailboxes() {
        let mailboxes = registry(1, 64);
        let _me = mailboxes.register(1);
        let mut other = mailboxes.register(2);
        let _full = mailboxes.register(3);
        assert_eq!(mailboxes.send(2, 3, Bytes::from_static(b"x")), Ok(()));
        assert_eq!(mailboxes.broadcast(1, &Bytes::from_static(b"hello")), 1);
        let got = other.recv().await.map(|m| m.payload);
        assert_eq!(got, Some(Bytes::from("hello")));
    }

    #[tokio::test]
    async fn close_all_ends_every_mailbox_now_and_to_come() {
        let mailboxes = registry(4, 64);
        let mut before = mailboxes.register(1);
        assert_eq!(mailboxes.send(2, 1, Bytes::from_static(b"last")), Ok(()));
        mailboxes.close_all();
        assert!(
            before.recv().await.is_some(),
            "what was queued is still delivered"
        );
        assert!(before.recv().await.is_none());
        let mut after = mailboxes.register(3);
        assert!(after.recv().await.is_none());
        // Messages sent during shutdown are refused, but nobody is marked overflowed.
        let refused = mailboxes.send(2, 3, Bytes::from_static(b"bye"));
        assert_eq!(refused, Err(MessageError::MailboxFull));
        assert!(!after.is_overflowed());
        assert_eq!(mailboxes.overflowed(), 0);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_message_and_for_the_close() {
        let mailboxes = registry(4, 64);
        let mut inbox = mailboxes.register(1);
        // A receive given up before anything came (as when the socket wins a select).
        let given_up = tokio::time::timeout(Duration::from_millis(10), inbox.recv()).await;
        assert!(given_up.is_err());
        let waiting = tokio::spawn(async move { (inbox.recv().await, inbox) });
        tokio::task::yield_now().await;
        assert_eq!(mailboxes.send(2, 1, Bytes::from_static(b"hi")), Ok(()));
        let woken = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        let (message, mut inbox) = woken.expect("woken by the message").expect("the task");
        assert_eq!(message.map(|m| m.payload), Some(Bytes::from("hi")));
        let waiting = tokio::spawn(async move { inbox.recv().await.is_none() });
        tokio::task::yield_now().await;
        mailboxes.close_all();
        let woken = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(woken.expect("woken by the close").expect("the task"));
    }

    #[test]
    fn a_name_is_held_by_one_connection_at_a_time() {
        let mailboxes = registry(4, 64);
        let _bob = mailboxes.register(1);
        let _mallory = mailboxes.register(2);
        assert_eq!(mailboxes.claim_name(1, "bob"), Ok(()));
        assert_eq!(mailboxes.claim_name(2, "bob"), Err(NameError::Taken));
        assert_eq!(mailboxes.claim_name(2, "BoB"), Err(NameError::Taken));
        assert_eq!(mailboxes.claim_name(2, "1"), Err(NameError::Taken), "an id");
        assert_eq!(
            mailboxes.claim_name(2, "2"),
            Ok(()),
            "its own id is its own"
        );
        assert_eq!(mailboxes.claim_name(1, "bob"), Ok(()), "renaming to itself");
        assert_eq!(mailboxes.claim_name(2, ""), Err(NameError::Invalid));
        assert_eq!(
            mailboxes.claim_name(2, &"x".repeat(257)),
            Err(NameError::Invalid)
        );
        drop(_bob);
        assert_eq!(mailboxes.claim_name(2, "bob"), Ok(()), "free once bob left");
    }

    #[test]
    fn peers_lists_ids_in_order_with_their_names() {
        let mailboxes = registry(4, 64);
        let _b = mailboxes.register(9);
        let _a = mailboxes.register(3);
        mailboxes.set_name(9, &"é".repeat(200));
        let peers = mailboxes.peers();
        assert_eq!(peers[0], Peer { id: 3, name: None });
        let name = peers[1].name.as_deref().unwrap_or_default();
        assert_eq!((peers[1].id, name.len()), (9, 256));
    }

    #[tokio::test]
    async fn a_move_request_comes_before_waiting_messages_which_stay() {
        let mailboxes = registry(4, 64);
        let mut inbox = mailboxes.register(1);
        assert_eq!(mailboxes.send(0, 1, Bytes::from_static(b"kept")), Ok(()));
        mailboxes.request_move(1, MoveRequest::IfPossible);
        mailboxes.request_move(1, MoveRequest::OrEnd);
        mailboxes.request_move(1, MoveRequest::IfPossible);
        assert!(matches!(
            inbox.recv_or_move().await,
            Received::Move(MoveRequest::OrEnd)
        ));
        assert!(matches!(
            inbox.recv_or_move().await,
            Received::Message(message) if message.payload == "kept"
        ));
        // A request wakes a connection waiting for its mailbox.
        let waiting = tokio::spawn(async move { inbox.recv_or_move().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        mailboxes.request_move(1, MoveRequest::IfPossible);
        let woken = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(
            woken.expect("woken").expect("the task"),
            Received::Move(MoveRequest::IfPossible)
        ));
    }

    #[tokio::test]
    async fn a_receiver_looks_under_the_lock_only_while_there_may_be_news() {
        let mailboxes = registry(4, 64);
        let mut inbox = mailboxes.register(1);
        assert!(!inbox.inbox.may_have_news());
        assert_eq!(mailboxes.send(2, 1, Bytes::from_static(b"a")), Ok(()));
        assert_eq!(mailboxes.send(2, 1, Bytes::from_static(b"b")), Ok(()));
        assert!(inbox.inbox.may_have_news());
        assert!(inbox.try_recv().is_some());
        assert!(inbox.inbox.may_have_news(), "a message is still queued");
        assert!(inbox.try_recv().is_some());
        assert!(!inbox.inbox.may_have_news());
        assert!(inbox.try_recv().is_none());
        mailboxes.request_move(1, MoveRequest::IfPossible);
        assert!(inbox.inbox.may_have_news());
        assert!(matches!(inbox.recv_or_move().await, Received::Move(_)));
        assert!(!inbox.inbox.may_have_news());
        mailboxes.close_all();
        assert!(inbox.inbox.may_have_news());
        assert!(matches!(inbox.recv_or_move().await, Received::Closed));
        assert!(inbox.inbox.may_have_news(), "a closed mailbox stays news");
    }

    #[tokio::test]
    async fn a_closed_mailbox_ignores_move_requests() {
        let mailboxes = registry(4, 64);
        let mut inbox = mailboxes.register(1);
        mailboxes.request_move(1, MoveRequest::OrEnd);
        mailboxes.close_all();
        assert!(matches!(inbox.recv_or_move().await, Received::Closed));
    }
}
