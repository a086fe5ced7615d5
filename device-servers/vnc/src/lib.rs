//! A display's VNC server: RFB sessions ([`rfb`]) over a copy of the
//! guest's picture ([`screen`]), VNC Authentication ([`auth`]).

pub mod auth;
pub mod keys;
pub mod rfb;
pub mod screen;
