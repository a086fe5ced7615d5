//! A display's VNC server: RFB sessions ([`rfb`]) over a copy of the
//! guest's picture ([`screen`]), VNC Authentication ([`auth`]), Raw, Zlib
//! and ZRLE ([`encode`]).

pub mod auth;
pub mod encode;
pub mod keys;
pub mod rfb;
pub mod screen;
