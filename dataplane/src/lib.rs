//! Sluice's fast path, free of I/O: wire formats, packet buffers, forwarding
//! tables and the batched pipeline of stages. Ports that touch the kernel (TAP,
//! AF_XDP, sockets) implement [`port::Port`] in their own modules; the pipeline
//! neither opens a socket nor reads the clock (time is passed in).

#![deny(unsafe_code)]

pub mod buf;
pub mod drop;
pub mod flow;
pub mod pcap;
pub mod pipeline;
pub mod policy;
pub mod port;
pub mod runtime;
pub mod stage;
pub mod sys;
pub mod table;
pub mod testkit;
pub mod trace;
pub mod wire;
