"""What more than one orch program needs: the object model, validation, quantities,
label selectors, the error tree and the generated gRPC stubs (``apimachinery.pb``).

Named after Kubernetes' apimachinery, which holds the same things for the same reason.
"""
