"""pytest settings shared by the unit tests and the notebooks (nbval)."""


def pytest_collection_modifyitems(items):
    """nbval gives up on a cell when no output message arrives for 5 s after the cell has run; the training cells'
    progress widgets send many, and on a busy CPU they can come later than that. Wait up to a minute instead."""
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            item.output_timeout = 60
