//! Which engine answers on the Docker API: Docker itself, or Podman's Docker-compatible service. Detected once,
//! from the version call's components, and consulted where the two differ (see decision record 0018).

/// The engine behind the Docker API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineFlavour {
    /// Docker's own daemon (or anything that does not say it is Podman).
    Docker,
    /// Podman's Docker-compatible API service (`podman system service`).
    Podman,
}

impl EngineFlavour {
    /// Reads the flavour from the names of the version call's `Components`: Podman lists a
    /// "Podman Engine" component, Docker an "Engine" one.
    pub fn from_components<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        if names.into_iter().any(|n| n.to_ascii_lowercase().starts_with("podman")) {
            Self::Podman
        } else {
            Self::Docker
        }
    }

    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }

    /// Whether attaching to a container that is neither created nor running must be refused before the call.
    /// Podman's compat attach re-initialises an exited container "for Docker compatibility": it goes back to
    /// `created` with its exit code reset to 0, and berth would then start the ended shell again.
    pub fn attach_needs_live_container(self) -> bool {
        self == Self::Podman
    }

    /// How long after a resize to send the same size once more, if at all. Podman hands a resize to conmon
    /// through a control FIFO, and conmon applies only the first message of each read: a resize written while
    /// conmon has not yet read the one before is lost. Sent again after a quiet spell, the last size arrives in
    /// a read of its own. A repeated size changes nothing (the kernel signals only a change).
    pub fn resize_resend_after(self) -> Option<std::time::Duration> {
        (self == Self::Podman).then_some(Self::RESIZE_RESEND)
    }

    /// How long after a resize it is sent again where that is needed (see [`EngineFlavour::resize_resend_after`]).
    pub const RESIZE_RESEND: std::time::Duration = std::time::Duration::from_millis(250);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_is_told_by_its_engine_component() {
        assert_eq!(
            EngineFlavour::from_components(["Podman Engine", "Conmon", "OCI Runtime (runc)"]),
            EngineFlavour::Podman
        );
        assert_eq!(
            EngineFlavour::from_components(["Engine", "containerd", "runc", "docker-init"]),
            EngineFlavour::Docker
        );
        assert_eq!(EngineFlavour::from_components([]), EngineFlavour::Docker);
    }
}
