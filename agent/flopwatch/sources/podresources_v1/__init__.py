"""Generated client of the kubelet pod-resources API (scripts/gen-podresources); needs grpcio."""
