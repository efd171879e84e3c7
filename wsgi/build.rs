//! Links against the machine's CPython (the one `PYO3_PYTHON`, or else
//! `python3` on `PATH`, names), and records its library directory as an
//! rpath, so that the tests and the command start without
//! `LD_LIBRARY_PATH` (pyenv installs `libpython3.x.so` outside the
//! loader's search path).
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
