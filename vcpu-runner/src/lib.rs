//! The runner's self-contained platform devices, a library as well so the
//! fuzz targets (fuzz/) can drive them: fw_cfg ([`fwcfg`]), the firmware's
//! CFI flash ([`flash`]) and the CMOS/RTC ([`rtc`]).

pub mod flash;
pub mod fwcfg;
pub mod rtc;
