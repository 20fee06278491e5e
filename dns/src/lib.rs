//! Cluster DNS for fairlead (the CoreDNS job). Not built yet: see the "Cluster DNS" issue.
