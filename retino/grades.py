"""The five DR grades: their count and names, defined once."""

NUM_CLASSES = 5
GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
REFERABLE_GRADE = 2  # grade >= 2: moderate NPDR or worse, refer to an ophthalmologist
