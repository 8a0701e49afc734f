"""Stand-ins shared by tests."""

from cifarapp.hardware import Measurements


class FakeMeasurements(Measurements):
    """Images/s from a function instead of timing anything; counts what was asked."""

    def __init__(self, speed):
        super().__init__()
        self.speed = speed
        self.asked = []

    def compare(self, work, candidates, device, rounds=2):
        self.asked += [(work, p, cl) for p, cl in candidates]
        return {(p, cl): self.speed(work, p, cl) for p, cl in candidates}
