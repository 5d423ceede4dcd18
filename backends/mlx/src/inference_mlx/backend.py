"""placeholder"""
class MlxBackend:
    name = "mlx"
    def available(self) -> bool:
        return False
    def load_model(self, *a, **k):
        raise NotImplementedError
