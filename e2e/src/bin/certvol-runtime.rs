//! `certvol-runtime SPEC.json`: starts one container as described by a
//! [`certvol_e2e::container::runtime::RuntimeSpec`] and becomes its command. Used by the e2e
//! container tier; needs root.

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: certvol-runtime SPEC.json");
        std::process::exit(2);
    };
    let spec = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!(
                "certvol-runtime: {}: {e}",
                std::path::Path::new(&path).display()
            );
            std::process::exit(2);
        }
    };
    let e = certvol_e2e::container::runtime::run(&spec);
    // The message kubelet would show as the container's start error (CreateContainerError).
    eprintln!("certvol-runtime: cannot start the container: {e}");
    std::process::exit(128);
}
