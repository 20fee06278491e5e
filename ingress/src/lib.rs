//! HTTP/TLS ingress gateway for fairlead (the ingress-nginx job). Not built yet: see the "Ingress gateway" issue.
